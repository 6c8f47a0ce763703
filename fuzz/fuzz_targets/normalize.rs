//! Key and serial normalisation: every parser either refuses a string or
//! gives a value whose canonical form parses back to the same value, and
//! normalising is idempotent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qualcache::model::normalize::normalize_into;
use qualcache::model::{
    Branch, CardSerial, Date, InstitutionCode, InsurerNumber, KeyText, PayerNumber, RecipientNumber,
};

/// Parses `s` as a `T`; if it parses, its display form must parse to it.
fn round_trip<T>(s: &str)
where
    T: std::str::FromStr + std::fmt::Display + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = s.parse::<T>() {
        let shown = v.to_string();
        match shown.parse::<T>() {
            Ok(again) => assert_eq!(again, v, "{shown:?}"),
            Err(_) => panic!("canonical form {shown:?} does not parse"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    round_trip::<InsurerNumber>(s);
    round_trip::<InstitutionCode>(s);
    round_trip::<PayerNumber>(s);
    round_trip::<RecipientNumber>(s);
    round_trip::<KeyText>(s);
    round_trip::<Branch>(s);
    round_trip::<Date>(s);
    if let Ok(serial) = s.parse::<CardSerial>() {
        let again: CardSerial = serial.as_str().parse().expect("canonical serial parses");
        assert_eq!(again.as_str(), serial.as_str());
    }
    let mut once = [0u8; 256];
    let mut twice = [0u8; 256];
    if let Some(n) = normalize_into(s, &mut once) {
        let n = n.to_string();
        assert_eq!(
            normalize_into(&n, &mut twice),
            Some(n.as_str()),
            "not idempotent"
        );
    }
});
