//! Where a row of an authoritative store is, and why it was refused: the
//! error every store and the snapshot builder report rows with. It names
//! the row and the column, never the value (it may be personal data).

/// A row that could not be read: where and why. The reason never repeats
/// the field's value (it may be personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{unit} {line}{}: {reason}", column.map(|c| format!(", column {c}")).unwrap_or_default())]
pub struct RowError {
    /// Where the row is: the 1-based line of the CSV file where it starts,
    /// or its qualification id in the database (see `unit`).
    pub line: u64,
    /// The column at fault, when one is.
    pub column: Option<&'static str>,
    /// Why.
    pub reason: String,
    /// What `line` counts.
    pub unit: RowUnit,
}

/// What a [`RowError`]'s position counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RowUnit {
    /// Lines of a CSV file.
    #[default]
    Line,
    /// Qualification ids of the database.
    Qualification,
}

impl std::fmt::Display for RowUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RowUnit::Line => "line",
            RowUnit::Qualification => "qualification_id",
        })
    }
}
