//! "Did you mean ...?": the known name a misspelt one was likely meant to be.

/// The candidate `given` is a likely misspelling of: at most two letters added, removed or
/// changed (any case), and not a candidate itself.
pub(crate) fn closest<'a>(
    given: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let given = given.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(&given, candidate), candidate))
        .filter(|&(distance, _)| (1..=2).contains(&distance))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over bytes (names here are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, &x) in a.as_bytes().iter().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, &y) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(x != y);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn a_misspelling_gets_the_name_and_a_distant_or_exact_one_nothing() {
        let known = ["sandbox", "production"];
        assert_eq!(closest("sandbx", known), Some("sandbox"));
        assert_eq!(closest("Prodution", known), Some("production"));
        assert_eq!(
            closest("paymnets", ["payments", "payouts"]),
            Some("payments")
        );
        assert_eq!(closest("staging", known), None);
        assert_eq!(closest("sandbox", known), None);
    }
}
