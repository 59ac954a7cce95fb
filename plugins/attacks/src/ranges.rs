//! The ranges of the keys that size an attack's work (iterations, restarts, queries,
//! target classes, gradient draws), checked when the attack is made, before any work.
//! [`RANGES`] is the one source: the checks look their bounds up in it, and README.md's
//! table of component ranges is [`table`] (a unit test compares the two).
//!
//! The upper bounds lie far above published evaluations (AutoAttack: 100 steps, 5 000
//! queries, 9 target classes, 20 EOT draws; Carlini–Wagner: 10 000 steps, 9 binary-search
//! steps) and bound a mistyped value's work.
use sat_core::PluginError;
use std::ops::RangeInclusive;

/// Most iterations of an iterative attack.
pub const MAX_STEPS: u32 = 10_000;
/// Most restarts (random starts) of an attack.
pub const MAX_RESTARTS: u32 = 100;
/// Most queries of a query-based attack.
pub const MAX_QUERIES: u32 = 1_000_000;
/// Most target classes of a targeted attack (ImageNet: 999).
pub const MAX_TARGET_CLASSES: u32 = 1000;
/// Most gradient draws averaged per step (EOT).
pub const MAX_EOT_ITER: u32 = 1000;
/// Most binary-search steps over CW's constant.
pub const MAX_BINARY_SEARCH_STEPS: u32 = 100;

/// One row of the table: the components, the key, its valid values.
pub type Row = (&'static [&'static str], &'static str, RangeInclusive<u32>);

const APGD: &[&str] = &["apgd-ce", "apgd-dlr", "apgd-t"];

/// Every sized key of this library's attacks and its range.
pub const RANGES: &[Row] = &[
    (&["pgd", "trades"], "steps", 0..=MAX_STEPS),
    (&["pgd"], "restarts", 1..=MAX_RESTARTS),
    (APGD, "steps", 1..=MAX_STEPS),
    (APGD, "restarts", 1..=MAX_RESTARTS),
    (APGD, "eot_iter", 1..=MAX_EOT_ITER),
    (&["apgd-t"], "target_classes", 1..=MAX_TARGET_CLASSES),
    (&["fab", "fab-t"], "steps", 1..=MAX_STEPS),
    (&["fab", "fab-t"], "restarts", 1..=MAX_RESTARTS),
    (&["fab-t"], "target_classes", 1..=MAX_TARGET_CLASSES),
    (&["cw-l2"], "steps", 1..=MAX_STEPS),
    (
        &["cw-l2"],
        "binary_search_steps",
        1..=MAX_BINARY_SEARCH_STEPS,
    ),
    (&["square"], "queries", 1..=MAX_QUERIES),
    (&["square"], "restarts", 1..=MAX_RESTARTS),
    (&["autoattack"], "steps", 1..=MAX_STEPS),
    (&["autoattack"], "queries", 1..=MAX_QUERIES),
    (&["autoattack"], "target_classes", 1..=MAX_TARGET_CLASSES),
    (&["autoattack"], "eot_iter", 1..=MAX_EOT_ITER),
];

/// The range of `component`'s `key`.
///
/// # Panics
/// If [`RANGES`] has no row for it: a key checked without a row is a bug the unit
/// tests find.
pub fn range(component: &str, key: &str) -> RangeInclusive<u32> {
    RANGES
        .iter()
        .find(|(components, k, _)| *k == key && components.contains(&component))
        .map(|(_, _, r)| r.clone())
        .unwrap_or_else(|| panic!("no range for [{component}] {key} in ranges::RANGES"))
}

/// Checks each `(key, value)` of `component` against its range: `[pgd] steps = 100000
/// is outside [0, 10000]`.
pub fn check(component: &str, values: &[(&str, u32)]) -> Result<(), PluginError> {
    for &(key, v) in values {
        let r = range(component, key);
        if !r.contains(&v) {
            return Err(PluginError::config(format!(
                "[{component}] {key} = {v} is outside [{}, {}]",
                r.start(),
                r.end()
            )));
        }
    }
    Ok(())
}

/// `n` with groups of three digits from 10 000 up.
fn spaced(n: u32) -> String {
    let n = n.to_string();
    if n.len() <= 4 {
        return n;
    }
    let mut out = String::new();
    for (i, ch) in n.chars().enumerate() {
        if i > 0 && (n.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}

/// [`RANGES`] as README.md's Markdown table.
pub fn table() -> String {
    let mut text = String::from("| component | key | valid values |\n|---|---|---|\n");
    for (components, key, r) in RANGES {
        let names: Vec<String> = components.iter().map(|c| format!("`{c}`")).collect();
        text += &format!(
            "| {} | `{key}` | {}–{} |\n",
            names.join(", "),
            spaced(*r.start()),
            spaced(*r.end())
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_table_is_the_one_the_checks_use() {
        let begin = "<!-- BEGIN ranges: sat-plugin-attacks (plugins/attacks/src/ranges.rs; its test table) -->";
        let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
        let readme = std::fs::read_to_string(readme).unwrap();
        let section = readme
            .split_once(begin)
            .and_then(|(_, after)| after.split_once("<!-- END ranges"))
            .map(|(section, _)| section.trim().to_string() + "\n");
        let expected = table();
        assert!(
            section.as_deref() == Some(expected.as_str()),
            "README.md's table of attack ranges differs from ranges::table(); between\n{begin}\nand <!-- END ranges --> it should read:\n\n{expected}"
        );
    }

    #[test]
    fn every_bound_is_refused_one_past_and_accepted_at() {
        for (components, key, r) in RANGES {
            for c in *components {
                assert!(check(c, &[(key, *r.start())]).is_ok());
                assert!(check(c, &[(key, *r.end())]).is_ok());
                let e = check(c, &[(key, r.end() + 1)]).unwrap_err().to_string();
                let want = format!(
                    "[{c}] {key} = {} is outside [{}, {}]",
                    r.end() + 1,
                    r.start(),
                    r.end()
                );
                assert!(e.contains(&want), "{e}\n  want {want}");
                if *r.start() > 0 {
                    assert!(check(c, &[(key, r.start() - 1)]).is_err(), "[{c}] {key}");
                }
            }
        }
        assert_eq!(spaced(1_000_000), "1 000 000");
    }

    /// Each attack checks every key of its rows when it is made, before any work.
    #[test]
    fn every_attack_refuses_its_sized_keys_out_of_range() {
        use sat_core::{component::create, ComponentKind};
        for (components, key, r) in RANGES {
            for c in *components {
                let make = |v: u32| create(ComponentKind::Attack, c, &format!("{key} = {v}"));
                let e = make(r.end() + 1).err().map(|e| e.to_string());
                let want = format!(
                    "[{c}] {key} = {} is outside [{}, {}]",
                    r.end() + 1,
                    r.start(),
                    r.end()
                );
                assert!(
                    e.as_ref().is_some_and(|e| e.contains(&want)),
                    "{e:?}\n  want {want}"
                );
                assert!(make(*r.end()).is_ok(), "[{c}] {key} = {}", r.end());
                if *r.start() > 0 {
                    assert!(
                        make(r.start() - 1).is_err(),
                        "[{c}] {key} = {}",
                        r.start() - 1
                    );
                }
            }
        }
        // An absurd count of a 32-bit key is refused as well.
        let e = create(ComponentKind::Attack, "pgd", "restarts = 4000000000")
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("[pgd] restarts = 4000000000 is outside [1, 100]"),
            "{e}"
        );
    }
}
