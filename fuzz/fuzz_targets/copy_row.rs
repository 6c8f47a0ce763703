//! The binary COPY reader of the PostgreSQL export: any message a server
//! (or something posing as one) sends is a row, a row error or a
//! "malformed binary COPY data" error, never a panic. The first byte says
//! whether the message is the stream's first (with the file header).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, message)) = data.split_first() else {
        return;
    };
    let _ = qualcache::store::postgres::export::read_copy_message(message, first & 1 == 1);
});
