//! Full semantic validation of an archive, beyond bytecheck: every record
//! decodes, every reference is in range, and both indexes find every row
//! they should.

use serde::Serialize;

use super::body::{
    card_hash, key_hash, key_tag, lookup_hash, tag_of, ArchivedBody, FLAG_AID_UNREGISTERED,
    FLAG_PRESCHOOL, MEDICAL_AID_SCHEME, NONE, NO_BYTE, TAG_ALL,
};
use super::lookup::{probe, string, QualView};
use super::SnapshotError;
use crate::model::text::MAX_KEY_TEXT;
use crate::progress::{Batched, Progress, Unit};

/// What `verify` checked.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Qualifications decoded and found through the insurance index.
    pub records: u64,
    /// Persons checked.
    pub persons: u64,
    /// Card links found through the card index.
    pub cards: u64,
    /// File size.
    pub bytes: u64,
}

fn invalid(msg: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid(msg.into())
}

pub(super) fn verify(
    body: &ArchivedBody,
    bytes: u64,
    progress: &Progress,
) -> Result<VerifyReport, SnapshotError> {
    // Strings.
    let mut prev = 0u32;
    for (i, end) in body.string_ends.iter().enumerate() {
        let end = end.to_native();
        if end < prev || end as usize > body.strings.len() {
            return Err(invalid(format!("string #{i} lies outside the string pool")));
        }
        prev = end;
        if string(body, i as u32).is_none() {
            return Err(invalid(format!("string #{i} is not UTF-8")));
        }
    }
    for (i, ins) in body.insurers.iter().enumerate() {
        if string(body, ins.name.to_native()).is_none() {
            return Err(invalid(format!("insurer #{i}: name out of range")));
        }
    }
    // Persons: their qualification runs tile `quals` in order.
    let mut next = 0u64;
    let mut cards = 0u64;
    progress.stage(
        "checking persons",
        Some(body.persons.len() as u64),
        Unit::Rows,
    );
    let mut done = Batched::new(progress, 1 << 16);
    for (p, person) in body.persons.iter().enumerate() {
        done.tick();
        let first = u64::from(person.first_qual.to_native());
        let count = u64::from(person.qual_count.to_native());
        if first != next || count == 0 {
            return Err(invalid(format!(
                "person #{p}: qualification run out of order"
            )));
        }
        next = first + count;
        for q in first..first + count {
            let rec = body
                .quals
                .get(q as usize)
                .ok_or_else(|| invalid(format!("person #{p}: qualification out of range")))?;
            let first_birth = body.quals.get(first as usize).map(|f| f.birth);
            if rec.person.to_native() as usize != p || Some(rec.birth) != first_birth {
                return Err(invalid(format!("qualification #{q}: person link broken")));
            }
        }
        if person.card_status != NO_BYTE {
            cards += 1;
            let found = card_hash(&person.card);
            let hit =
                probe(&body.card_slots, found, tag_of(found), TAG_ALL).any(|r| r as usize == p);
            if !hit {
                return Err(invalid(format!(
                    "person #{p}: not reachable through the card index"
                )));
            }
        }
    }
    if next != body.quals.len() as u64 {
        return Err(invalid("qualifications not covered by persons"));
    }
    drop(done);
    // Qualifications: decode fully and find through the insurance index.
    progress.stage(
        "checking records",
        Some(body.quals.len() as u64),
        Unit::Records,
    );
    let mut done = Batched::new(progress, 1 << 16);
    for (q, rec) in body.quals.iter().enumerate() {
        done.tick();
        let view = QualView::at(body, q as u32)
            .ok_or_else(|| invalid(format!("qualification #{q}: out of range")))?;
        if usize::from(rec.symbol_len) > MAX_KEY_TEXT || usize::from(rec.number_len) > MAX_KEY_TEXT
        {
            return Err(invalid(format!("qualification #{q}: key text too long")));
        }
        let qual = view
            .to_qualification()
            .map_err(|e| invalid(e.to_string()))?;
        let unregistered = qual
            .public_expense
            .as_ref()
            .is_some_and(|p| p.payer.scheme() == MEDICAL_AID_SCHEME && !p.registered);
        let flags = if qual.preschool { FLAG_PRESCHOOL } else { 0 }
            | if unregistered {
                FLAG_AID_UNREGISTERED
            } else {
                0
            };
        if rec.flags != flags {
            return Err(invalid(format!(
                "qualification #{q}: flags disagree with the record"
            )));
        }
        let symbol = qual.symbol.as_ref().map_or(&[][..], |s| s.as_bytes());
        let hash = lookup_hash(
            key_hash(qual.insurer_number.to_raw(), symbol, qual.number.as_bytes()),
            rec.birth.to_native(),
        );
        let tag = key_tag(hash, rec.branch);
        if !probe(&body.key_slots, hash, tag, TAG_ALL).any(|r| r as usize == q) {
            return Err(invalid(format!(
                "qualification #{q}: not reachable through the insurance index"
            )));
        }
    }
    drop(done);
    progress.stage("checking the indexes", None, Unit::Rows);
    // Slots point at existing rows.
    for (name, slots, rows) in [
        ("card", &body.card_slots, body.persons.len()),
        ("insurance", &body.key_slots, body.quals.len()),
    ] {
        if !slots.iter().any(|s| s.row == NONE) {
            return Err(invalid(format!("{name} index has no free slot")));
        }
        if slots
            .iter()
            .any(|s| s.row != NONE && s.row.to_native() as usize >= rows)
        {
            return Err(invalid(format!("{name} index points outside its table")));
        }
    }
    Ok(VerifyReport {
        records: body.quals.len() as u64,
        persons: body.persons.len() as u64,
        cards,
        bytes,
    })
}
