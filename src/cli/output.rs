//! How results are printed: metrics tables, prediction tables, JSON and CSV.

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
    /// COCO results JSON (detection models only).
    Coco,
}

impl Format {
    /// The listing this format writes (`None` for COCO results, which are collected and written at the end).
    pub fn listing(self) -> Option<kiln_infer::ListingFormat> {
        match self {
            Format::Table => Some(kiln_infer::ListingFormat::Table),
            Format::Json => Some(kiln_infer::ListingFormat::Json),
            Format::Csv => Some(kiln_infer::ListingFormat::Csv),
            Format::Coco => None,
        }
    }
}

/// A finished run of any task as it reads, then the process's peak memory.
pub fn print_outcome(outcome: &dyn std::fmt::Display) {
    print!("{outcome}");
    if let Some(mib) = peak_rss_mib() {
        println!("peak resident memory: {mib:.0} MiB");
    }
}

/// The process's peak resident set size (VmHWM), where /proc tells it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}
