//! "Did you mean …?" for unknown names and keys.

/// The candidate closest to `word` (Jaro-Winkler similarity at least 0.7), if any.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `"; did you mean `x`?"` or nothing.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    nearest(word, candidates).map(|c| format!("; did you mean `{c}`?")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_typos_and_ignores_unrelated_words() {
        assert_eq!(nearest("epohcs", ["epochs", "batch_size", "lr"]), Some("epochs"));
        assert_eq!(nearest("mask", ["masks", "boxes"]), Some("masks"));
        assert_eq!(nearest("zzz", ["epochs", "batch_size"]), None);
    }
}
