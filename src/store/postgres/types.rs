//! [`Date`] in PostgreSQL's binary `date` format (days since 2000-01-01).

use std::error::Error;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use crate::model::Date;

/// Days from 1970-01-01 (our day 0) to 2000-01-01 (PostgreSQL's).
const PG_EPOCH_DAYS: i32 = 10_957;

/// A [`Date`] as a PostgreSQL `date`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PgDate(pub Date);

impl ToSql for PgDate {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_i32(self.0.day_number() - PG_EPOCH_DAYS);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }

    to_sql_checked!();
}

/// A date from PostgreSQL's binary `date` (big-endian days since
/// 2000-01-01); `None` outside the years [`Date`] accepts ('infinity'
/// included).
pub(crate) fn date_from_pg(raw: [u8; 4]) -> Option<Date> {
    i32::from_be_bytes(raw)
        .checked_add(PG_EPOCH_DAYS)
        .and_then(Date::from_day_number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_in_postgres_encoding() {
        let d = Date::from_ymd(2000, 1, 1).unwrap();
        let mut buf = BytesMut::new();
        PgDate(d).to_sql(&Type::DATE, &mut buf).unwrap();
        assert_eq!(&buf[..], &[0, 0, 0, 0]);
        let d = Date::from_ymd(1999, 12, 31).unwrap();
        let mut buf = BytesMut::new();
        PgDate(d).to_sql(&Type::DATE, &mut buf).unwrap();
        assert_eq!(&buf[..], &(-1i32).to_be_bytes());
        assert_eq!(date_from_pg(buf[..].try_into().unwrap()), Some(d));
        // PostgreSQL's 'infinity' and far dates are refused, not wrapped.
        assert_eq!(date_from_pg(i32::MAX.to_be_bytes()), None);
        assert_eq!(date_from_pg(i32::MIN.to_be_bytes()), None);
    }
}
