//! "Did you mean …?" for unknown names and keys, and values shortened for messages.

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

/// Most list entries a message shows.
pub const LIST_SHOWN: usize = 8;

/// `text` cut to at most `max` characters, the cut marked: `abc… (2000000 bytes)`.
pub fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()),
        None => text.to_string(),
    }
}

/// `[a, b, c]`, or for a long list its first and last entries and its length:
/// `[1, 1, 1, 1, 1, 1, …, 1, 1] (2000000 entries)`.
pub fn show_list<T: std::fmt::Debug>(values: &[T]) -> String {
    if values.len() <= LIST_SHOWN {
        return format!("{values:?}");
    }
    let show = |v: &[T]| {
        v.iter()
            .map(|x| format!("{x:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tail = 2;
    format!(
        "[{}, …, {}] ({} entries)",
        show(&values[..LIST_SHOWN - tail]),
        show(&values[values.len() - tail..]),
        values.len()
    )
}

/// Most characters of an error message; a longer one keeps its start and its end
/// (where the range is stated).
pub const MESSAGE_CHARS: usize = 1000;

/// `text` within [`MESSAGE_CHARS`]: the middle of a longer one left out, and said so.
pub fn clip_message(text: &str) -> String {
    let chars = text.chars().count();
    if chars <= MESSAGE_CHARS {
        return text.to_string();
    }
    let (head, tail) = (MESSAGE_CHARS * 2 / 3, MESSAGE_CHARS / 4);
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(chars - tail).collect();
    format!(
        "{start} … ({} characters left out) … {end}",
        chars - head - tail
    )
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

    #[test]
    fn long_values_are_shortened() {
        let list: Vec<u32> = vec![1; 2_000_000];
        let shown = show_list(&list);
        assert_eq!(shown, "[1, 1, 1, 1, 1, 1, …, 1, 1] (2000000 entries)");
        assert_eq!(show_list(&[3, 2]), "[3, 2]");
        assert_eq!(shorten("abcdef", 3), "abc… (6 bytes)");
        assert_eq!(shorten("ab", 3), "ab");
        let long = format!("x = [{}] is outside [0, 1]", "7, ".repeat(100_000));
        let clipped = clip_message(&long);
        assert!(
            clipped.chars().count() < MESSAGE_CHARS + 60,
            "{}",
            clipped.len()
        );
        assert!(clipped.starts_with("x = [7, 7") && clipped.ends_with("is outside [0, 1]"));
        assert!(clipped.contains("characters left out"));
        assert_eq!(clip_message("short"), "short");
    }
}
