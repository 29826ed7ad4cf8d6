//! What `dynakv bench` asks for: the operation mix and the key chooser, either from a YCSB core
//! workload (A, B, C, D, F) or from `--read-ratio` with a chosen distribution.
//!
//! The YCSB core workloads (Cooper et al., "Benchmarking Cloud Serving Systems with YCSB", SoCC
//! 2010), as dynakv runs them:
//! | workload | mix | keys |
//! |---|---|---|
//! | A (update heavy) | 50% read, 50% update | zipfian |
//! | B (read mostly) | 95% read, 5% update | zipfian |
//! | C (read only) | 100% read | zipfian |
//! | D (read latest) | 95% read, 5% insert | latest |
//! | F (read-modify-write) | 50% read, 50% read-modify-write | zipfian |
//!
//! Workload E (short range scans) needs range scans, which a hash-partitioned store does not
//! have; it is refused with that reason. Zipfian uses the constant 0.99 and is *scrambled* (each
//! rank is hashed onto the key space, so the hot keys are spread over partitions); "latest"
//! picks ranks back from the newest inserted key.

use std::sync::atomic::{AtomicU64, Ordering};

use clap::ValueEnum;
use rand::Rng;
use rand_distr::{Distribution, Zipf};

/// The YCSB zipfian constant.
const ZIPF_S: f64 = 0.99;

/// A YCSB core workload (`--workload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// 50% read, 50% update, zipfian.
    A,
    /// 95% read, 5% update, zipfian.
    B,
    /// 100% read, zipfian.
    C,
    /// 95% read, 5% insert, latest.
    D,
    /// Short range scans: refused (dynakv has no range scans).
    E,
    /// 50% read, 50% read-modify-write, zipfian.
    F,
}

/// How keys are picked (`--distribution`, when no `--workload` is given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// Scrambled zipfian (0.99): a few hot keys take most requests.
    Zipfian,
    /// Ranks back from the newest inserted key.
    Latest,
}

/// One kind of operation; also the index of its histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read = 0,
    Update = 1,
    Insert = 2,
    ReadModifyWrite = 3,
}

impl Op {
    /// Every kind, in histogram order.
    pub const ALL: [Op; 4] = [Op::Read, Op::Update, Op::Insert, Op::ReadModifyWrite];

    /// The name in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Update => "update",
            Op::Insert => "insert",
            Op::ReadModifyWrite => "read_modify_write",
        }
    }
}

/// The shares of each operation (summing to 1) and the key chooser.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    read: f64,
    update: f64,
    insert: f64,
    chooser: KeyDistribution,
}

impl Mix {
    /// The mix of a YCSB workload; E is refused.
    pub fn of(workload: Workload) -> anyhow::Result<Mix> {
        let (read, update, insert, chooser) = match workload {
            Workload::A => (0.5, 0.5, 0.0, KeyDistribution::Zipfian),
            Workload::B => (0.95, 0.05, 0.0, KeyDistribution::Zipfian),
            Workload::C => (1.0, 0.0, 0.0, KeyDistribution::Zipfian),
            Workload::D => (0.95, 0.0, 0.05, KeyDistribution::Latest),
            Workload::E => anyhow::bail!(
                "workload e needs range scans, which dynakv does not have (keys are hashed onto \
                 partitions); run a, b, c, d or f"
            ),
            // The rest of F is read-modify-write.
            Workload::F => (0.5, 0.0, 0.0, KeyDistribution::Zipfian),
        };
        Ok(Mix {
            read,
            update,
            insert,
            chooser,
        })
    }

    /// Reads and updates in the ratio `read_ratio`, keys from `chooser`.
    pub fn custom(read_ratio: f64, chooser: KeyDistribution) -> Mix {
        Mix {
            read: read_ratio,
            update: 1.0 - read_ratio,
            insert: 0.0,
            chooser,
        }
    }

    /// How keys are chosen.
    pub fn chooser(&self) -> KeyDistribution {
        self.chooser
    }

    /// Draws the next operation.
    pub fn pick(&self, rng: &mut impl Rng) -> Op {
        let x: f64 = rng.gen();
        if x < self.read {
            Op::Read
        } else if x < self.read + self.update {
            Op::Update
        } else if x < self.read + self.update + self.insert {
            Op::Insert
        } else {
            Op::ReadModifyWrite
        }
    }
}

/// Picks keys (as indices) for one run; shared by every worker.
#[derive(Debug)]
pub struct KeyChooser {
    chooser: KeyDistribution,
    /// The initial key space, `0..keys`.
    keys: u64,
    /// Ranks for zipfian and latest (1 = hottest).
    zipf: Zipf<f64>,
    /// The next key an insert creates; keys below it exist.
    next_insert: AtomicU64,
}

impl KeyChooser {
    /// A chooser over `keys` initial keys.
    pub fn new(chooser: KeyDistribution, keys: u64) -> anyhow::Result<Self> {
        let zipf = Zipf::new(keys.max(1), ZIPF_S)
            .map_err(|e| anyhow::anyhow!("zipfian over {keys} keys: {e}"))?;
        Ok(KeyChooser {
            chooser,
            keys,
            zipf,
            next_insert: AtomicU64::new(keys),
        })
    }

    /// A key for a read, update or read-modify-write.
    pub fn existing(&self, rng: &mut impl Rng) -> u64 {
        match self.chooser {
            KeyDistribution::Uniform => rng.gen_range(0..self.keys),
            KeyDistribution::Zipfian => {
                let rank = self.rank(rng);
                // Scrambled: spread the hot ranks over the whole key space.
                xxhash_rust::xxh3::xxh3_64(&rank.to_le_bytes()) % self.keys
            }
            KeyDistribution::Latest => {
                let newest = self.next_insert.load(Ordering::Relaxed).saturating_sub(1);
                newest.saturating_sub(self.rank(rng).saturating_sub(1))
            }
        }
    }

    /// A new key for an insert.
    pub fn insert(&self) -> u64 {
        self.next_insert.fetch_add(1, Ordering::Relaxed)
    }

    fn rank(&self, rng: &mut impl Rng) -> u64 {
        // Zipf samples ranks 1..=keys as floats holding integers.
        (self.zipf.sample(rng) as u64).clamp(1, self.keys.max(1))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn workload_mixes_match_ycsb() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let count = |w: Workload, op: Op, rng: &mut rand::rngs::StdRng| {
            let mix = Mix::of(w).unwrap();
            (0..10_000).filter(|_| mix.pick(rng) == op).count()
        };
        assert_eq!(count(Workload::C, Op::Read, &mut rng), 10_000);
        let updates = count(Workload::A, Op::Update, &mut rng);
        assert!((4_500..5_500).contains(&updates), "{updates}");
        let inserts = count(Workload::D, Op::Insert, &mut rng);
        assert!((300..700).contains(&inserts), "{inserts}");
        let rmw = count(Workload::F, Op::ReadModifyWrite, &mut rng);
        assert!((4_500..5_500).contains(&rmw), "{rmw}");
        assert!(Mix::of(Workload::E)
            .unwrap_err()
            .to_string()
            .contains("range scans"));
    }

    #[test]
    fn zipfian_keys_are_skewed_and_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let c = KeyChooser::new(KeyDistribution::Zipfian, 1_000).unwrap();
        let mut hits = vec![0u32; 1_000];
        for _ in 0..100_000 {
            let k = c.existing(&mut rng);
            hits[k as usize] += 1;
        }
        hits.sort_unstable();
        let top10: u32 = hits.iter().rev().take(10).sum();
        // Under a uniform choice the 10 busiest keys would take about 1% of the requests.
        assert!(top10 > 20_000, "{top10}");
    }

    #[test]
    fn latest_follows_the_inserts() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let c = KeyChooser::new(KeyDistribution::Latest, 100).unwrap();
        for _ in 0..50 {
            c.insert();
        }
        let picks: Vec<u64> = (0..1_000).map(|_| c.existing(&mut rng)).collect();
        assert!(picks.iter().all(|&k| k < 150));
        let newest = picks.iter().filter(|&&k| k >= 140).count();
        assert!(newest > 300, "{newest}");
    }
}
