//! "Did you mean …?" for unknown names and keys.

/// The candidate closest to `word`: fewest edits (a swap of neighbours counts as one),
/// at most a third of the word's length (at least one); ties go to the higher
/// Jaro-Winkler similarity.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::osa_distance(word, c),
                -strsim::jaro_winkler(word, c),
                c,
            )
        })
        .filter(|(distance, _, _)| *distance <= limit)
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
        .map(|(_, _, c)| c)
}

/// `"; did you mean `x`?"` or nothing.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    nearest(word, candidates)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_typos_and_ignores_unrelated_words() {
        assert_eq!(
            nearest("epohcs", ["epochs", "batch_size", "lr"]),
            Some("epochs")
        );
        assert_eq!(nearest("mask", ["masks", "boxes"]), Some("masks"));
        assert_eq!(nearest("pdg", ["fgsm", "pgd", "sat"]), Some("pgd"));
        assert_eq!(nearest("adma", ["adam", "sgd"]), Some("adam"));
        assert_eq!(nearest("zzz", ["epochs", "batch_size"]), None);
    }
}
