//! Assertions the workspace's tests share: the unit tests of every crate and
//! the harness (`riskfeat-tests`) check messages the same way. A few lines
//! with no dependencies, so they are part of the library rather than behind
//! a feature.

/// Asserts that `text` contains every one of `wants`; on failure the panic
/// lists all that are missing at once (not only the first), then `text`.
#[track_caller]
pub fn assert_contains_all(text: &str, wants: &[&str]) {
    let missing: Vec<&str> = wants
        .iter()
        .copied()
        .filter(|want| !text.contains(want))
        .collect();
    assert!(missing.is_empty(), "missing {missing:?} in:\n{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_when_everything_is_there() {
        assert_contains_all("a config error naming x and y", &["x", "y", "naming"]);
        assert_contains_all("anything", &[]);
    }

    #[test]
    fn names_every_missing_part_at_once() {
        let panic =
            std::panic::catch_unwind(|| assert_contains_all("only a here", &["a", "b", "c"]))
                .expect_err("b and c are missing");
        let msg = panic.downcast_ref::<String>().expect("a formatted message");
        assert_eq!(msg, "missing [\"b\", \"c\"] in:\nonly a here");
    }
}
