//! Docker-style generated container names: `adjective_surname`.

use rand::seq::IndexedRandom;

const ADJECTIVES: &[&str] = &[
    "admiring",
    "agitated",
    "amazing",
    "awesome",
    "blissful",
    "bold",
    "brave",
    "busy",
    "calm",
    "clever",
    "cool",
    "dazzling",
    "determined",
    "eager",
    "elastic",
    "elegant",
    "epic",
    "festive",
    "fervent",
    "friendly",
    "gallant",
    "gentle",
    "happy",
    "hopeful",
    "jolly",
    "keen",
    "kind",
    "laughing",
    "lucid",
    "magical",
    "modest",
    "nifty",
    "nostalgic",
    "optimistic",
    "patient",
    "peaceful",
    "pensive",
    "practical",
    "quirky",
    "relaxed",
    "serene",
    "sharp",
    "silly",
    "stoic",
    "sweet",
    "tender",
    "upbeat",
    "vibrant",
    "vigilant",
    "wizardly",
    "youthful",
    "zealous",
];

const SURNAMES: &[&str] = &[
    "agnesi",
    "archimedes",
    "babbage",
    "bell",
    "bohr",
    "boole",
    "cannon",
    "carson",
    "cerf",
    "curie",
    "darwin",
    "dijkstra",
    "einstein",
    "euclid",
    "euler",
    "faraday",
    "fermat",
    "feynman",
    "franklin",
    "galileo",
    "gauss",
    "goldberg",
    "hamilton",
    "hawking",
    "hertz",
    "hopper",
    "hypatia",
    "johnson",
    "kepler",
    "knuth",
    "lamarr",
    "lamport",
    "leakey",
    "liskov",
    "lovelace",
    "maxwell",
    "meitner",
    "mendel",
    "newton",
    "noether",
    "pascal",
    "pasteur",
    "planck",
    "ritchie",
    "shannon",
    "sinoussi",
    "tesla",
    "thompson",
    "torvalds",
    "turing",
    "volta",
    "wozniak",
    "yalow",
];

/// A random `adjective_surname`; `taken` says whether a candidate is in use, and after a few
/// collisions a digit is appended, as Docker does.
pub fn generate(taken: impl Fn(&str) -> bool) -> String {
    let mut rng = rand::rng();
    for attempt in 0..20 {
        // Both lists are non-empty constants, so `choose` always returns Some.
        let adjective = ADJECTIVES.choose(&mut rng).copied().unwrap_or("busy");
        let surname = SURNAMES.choose(&mut rng).copied().unwrap_or("turing");
        let name = if attempt < 5 {
            format!("{adjective}_{surname}")
        } else {
            format!("{adjective}_{surname}{}", rand::random_range(0..10))
        };
        if !taken(&name) {
            return name;
        }
    }
    format!("container_{}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_adjective_underscore_surname_and_avoid_taken_ones() {
        let name = generate(|_| false);
        let (adjective, surname) = name.split_once('_').unwrap();
        assert!(ADJECTIVES.contains(&adjective));
        assert!(SURNAMES.contains(&surname));
        let other = generate(|candidate| candidate == name);
        assert_ne!(other, name);
    }
}
