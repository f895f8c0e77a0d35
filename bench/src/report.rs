//! The benchmark's results: a table for people and JSON for tools.

use serde::Serialize;

use crate::stats::Summary;

/// One row of the table: a figure measured for husk and its anchor.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub figure: String,
    /// Unit of the numbers.
    pub unit: String,
    /// husk's numbers.
    pub husk: Option<Summary>,
    /// The anchor's name (QEMU microvm, runc, ...).
    pub anchor_name: String,
    /// The anchor's numbers.
    pub anchor: Option<Summary>,
}

impl Row {
    /// husk's median divided by the anchor's.
    pub fn ratio(&self) -> Option<f64> {
        match (self.husk, self.anchor) {
            (Some(h), Some(a)) if a.median > 0.0 => Some(h.median / a.median),
            _ => None,
        }
    }
}

fn cell(s: Option<Summary>) -> String {
    match s {
        Some(s) => format!("{:.1} [{:.1}..{:.1}]", s.median, s.min, s.max),
        None => "-".into(),
    }
}

/// Renders the rows as a fixed-width table.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "figure",
        "unit",
        "husk median [min..max]",
        "anchor",
        "anchor median [min..max]",
        "ratio",
    ];
    let body: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.clone(),
                r.unit.clone(),
                cell(r.husk),
                r.anchor_name.clone(),
                cell(r.anchor),
                r.ratio()
                    .map(|x| format!("{x:.2}x"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &body {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(&header.map(String::from));
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  "),
    );
    out.push('\n');
    for row in &body {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_ratio_and_dashes() {
        let rows = vec![
            Row {
                figure: "boot".into(),
                unit: "ms".into(),
                husk: Summary::of(&[100.0, 120.0, 110.0]),
                anchor_name: "QEMU microvm".into(),
                anchor: Summary::of(&[200.0, 220.0, 210.0]),
            },
            Row {
                figure: "memory".into(),
                unit: "MiB".into(),
                husk: Summary::of(&[30.0]),
                anchor_name: "-".into(),
                anchor: None,
            },
        ];
        let t = table(&rows);
        assert!(t.contains("110.0 [100.0..120.0]"), "{t}");
        assert!(t.contains("0.52x"), "{t}");
        assert_eq!(t.lines().count(), 4);
        assert!(t.lines().nth(3).unwrap().ends_with('-'), "{t}");
    }
}
