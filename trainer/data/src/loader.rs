//! Batches from a prepared split, made by a loader thread ahead of the training step and
//! handed over through a bounded crossbeam channel (so at most `queue` batches wait).
//!
//! Order: a rank reads its own contiguous slice of the rows. With shuffling on, the slice
//! is cut into windows of `window` rows; the order of windows and the order of rows inside
//! each window are permutations drawn from (seed, epoch), so the shuffle is repeatable and
//! its memory is one window of row indices, whatever the file size.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver};
use shardrec_tables::{mix64, KeyedJaggedIds};

use super::prepared::PreparedSplit;

/// One batch, ready for the tables and the dense model.
#[derive(Debug, Clone)]
pub struct Batch {
    pub labels: Vec<f32>,
    /// `[rows, num_dense]`, row-major.
    pub dense: Vec<f32>,
    pub sparse: KeyedJaggedIds,
    /// Group key of each row (for GAUC), when asked for.
    pub groups: Option<Vec<u64>>,
    /// When the batch is this rank's share of a job-wide batch: the offset of its first
    /// row in that batch and the batch's rows (per-sample random draws are then taken
    /// from the job-wide batch's, so they do not depend on the number of ranks).
    pub step_slice: Option<(usize, usize)>,
}

impl Batch {
    /// A batch of no rows: what a rank whose slice has run out feeds a collective step.
    pub fn empty(num_categorical: usize, with_groups: bool) -> Self {
        Self {
            labels: vec![],
            dense: vec![],
            sparse: KeyedJaggedIds::from_lengths(num_categorical, 0, &[], vec![])
                .expect("an empty batch is well formed"),
            groups: with_groups.then(Vec::new),
            step_slice: None,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Rows `a..b` of this (job-wide) batch as the share a rank would train on: the same
    /// rows, and `step_slice` saying where they sit in the whole batch.
    pub fn rows(&self, a: usize, b: usize) -> Batch {
        let nd = if self.is_empty() {
            0
        } else {
            self.dense.len() / self.len()
        };
        let nc = self.sparse.num_keys();
        let mut lengths = Vec::with_capacity(nc * (b - a));
        let mut values = Vec::new();
        for f in 0..nc {
            for r in a..b {
                let ids = self.sparse.ids(f, r);
                lengths.push(ids.len() as u32);
                values.extend_from_slice(ids);
            }
        }
        Batch {
            labels: self.labels[a..b].to_vec(),
            dense: self.dense[a * nd..b * nd].to_vec(),
            sparse: KeyedJaggedIds::from_lengths(nc, b - a, &lengths, values)
                .expect("lengths are counted from the values just copied"),
            groups: self.groups.as_ref().map(|g| g[a..b].to_vec()),
            step_slice: Some((a, self.len())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub epoch: u64,
    pub window: usize,
    pub queue: usize,
    /// (rank, world): this rank reads the rank-th of world contiguous slices.
    pub shard: (usize, usize),
    /// Instead of contiguous slices, cut the whole split into batches and give rank `r`
    /// batches `r, r + world, ...`: every batch then holds the rows it would hold in one
    /// process, whatever the number of ranks (evaluation uses this, so predictions do not
    /// depend on how many ranks compute them).
    pub interleave_batches: bool,
    /// Instead of contiguous slices, cut the whole split into job-wide batches of
    /// `batch_size x world` rows (the batches one process would train on) and give rank
    /// `r` the r-th of `world` equal parts of each: every step trains on the same rows
    /// whatever the number of ranks (training uses this).
    pub split_batches: bool,
    /// Batches of this rank's order to pass over without reading them (a resumed run
    /// continuing mid-epoch).
    pub skip_batches: usize,
    /// Categorical feature whose first id groups rows for GAUC.
    pub group_feature: Option<usize>,
}

/// Receiving end of a loader thread.
pub struct BatchStream {
    rx: Receiver<Batch>,
    handle: Option<JoinHandle<()>>,
}

impl Iterator for BatchStream {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.rx.recv().ok()
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        // Closing the channel stops the thread at its next send.
        let (_, dead) = bounded(0);
        self.rx = dead;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Small deterministic RNG (SplitMix64 stream) for permutations.
struct Stream(u64);
impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Rows of this rank's slice in the order the epoch visits them, window by window.
pub fn row_order(rows: usize, opts: &LoaderOptions) -> impl Iterator<Item = Vec<usize>> {
    let (rank, world) = if opts.interleave_batches || opts.split_batches {
        (0, 1)
    } else {
        opts.shard
    };
    let start = rows * rank / world.max(1);
    let end = rows * (rank + 1) / world.max(1);
    let window = opts.window.max(1);
    let n_windows = (end - start).div_ceil(window);
    let mut rng = Stream(mix64(opts.seed ^ mix64(opts.epoch.wrapping_add(0x5EED))));
    let mut windows: Vec<usize> = (0..n_windows).collect();
    if opts.shuffle {
        rng.shuffle(&mut windows);
    }
    let shuffle = opts.shuffle;
    windows.into_iter().map(move |w| {
        let a = start + w * window;
        let mut idx: Vec<usize> = (a..(a + window).min(end)).collect();
        if shuffle {
            rng.shuffle(&mut idx);
        }
        idx
    })
}

/// Gathers the given rows into a batch: per categorical feature, its vocabulary ids
/// widened to u64, or for a keyed feature its raw keys.
pub fn gather(split: &PreparedSplit, rows: &[usize], group_feature: Option<usize>) -> Batch {
    let labels_all = split.labels();
    let labels = rows.iter().map(|&r| labels_all[r]).collect();
    let nd = split.num_dense();
    let mut dense = vec![0.0f32; rows.len() * nd];
    for j in 0..nd {
        let col = split.dense_column(j);
        for (i, &r) in rows.iter().enumerate() {
            dense[i * nd + j] = col[r];
        }
    }
    let nc = split.num_categorical();
    let mut lengths = Vec::with_capacity(nc * rows.len());
    let mut values = Vec::with_capacity(nc * rows.len());
    for f in 0..nc {
        for &r in rows {
            let row = split.cat_values(f, r);
            lengths.push(row.len() as u32);
            row.extend_into(&mut values);
        }
    }
    let sparse = KeyedJaggedIds::from_lengths(nc, rows.len(), &lengths, values)
        .expect("lengths are counted from the values just gathered");
    let groups = group_feature.map(|f| rows.iter().map(|&r| split.first_value(f, r)).collect());
    Batch {
        labels,
        dense,
        sparse,
        groups,
        step_slice: None,
    }
}

/// The smallest range holding every row of `rows`.
fn span(rows: &[usize]) -> std::ops::Range<usize> {
    let lo = rows.iter().copied().min().unwrap_or(0);
    let hi = rows.iter().copied().max().map_or(lo, |r| r + 1);
    lo..hi
}

/// Gives the split's mapped pages back behind the loader ([`PreparedSplit::release_rows`]),
/// so a pass keeps about one shuffle window mapped: a shuffled window's rows once the
/// batch that takes its last rows is made (they may wait in the next batch), an unshuffled
/// batch's rows as soon as it is made. Releasing pages changes no value read.
struct DropBehind {
    shuffled: bool,
    read: Vec<std::ops::Range<usize>>,
}

impl DropBehind {
    fn new(shuffled: bool) -> Self {
        Self {
            shuffled,
            read: Vec::new(),
        }
    }

    /// Every row of `window` is in `pending` or a batch made.
    fn window_read(&mut self, window: &[usize]) {
        if self.shuffled {
            self.read.push(span(window));
        }
    }

    /// Every row pushed so far is in a batch made.
    fn batch_made(&mut self, split: &PreparedSplit, batch: &[usize]) {
        if !self.shuffled {
            split.release_rows(span(batch));
        }
        for rows in self.read.drain(..) {
            split.release_rows(rows);
        }
    }
}

/// Starts a loader thread over `split`.
pub fn spawn_loader(split: Arc<PreparedSplit>, opts: LoaderOptions) -> BatchStream {
    let (tx, rx) = bounded(opts.queue.max(1));
    let handle = std::thread::Builder::new()
        .name(format!("loader-{}", split.name.as_str()))
        .spawn(move || {
            let (rank, world) = opts.shard;
            let world = world.max(1);
            let bs = if opts.split_batches {
                opts.batch_size.max(1) * world
            } else {
                opts.batch_size.max(1)
            };
            // batch `index` of the order goes out if it is this rank's and not skipped
            let mut index = 0usize;
            let mut mine = 0usize;
            let mut emit = |rows: &[usize]| -> bool {
                let ours = !opts.interleave_batches || index % world == rank;
                index += 1;
                if !ours {
                    return true;
                }
                mine += 1;
                if mine <= opts.skip_batches {
                    return true;
                }
                if opts.split_batches {
                    let (a, b) = (rows.len() * rank / world, rows.len() * (rank + 1) / world);
                    if a == b {
                        return true; // a last batch too small to give this rank a row
                    }
                    let mut batch = gather(&split, &rows[a..b], opts.group_feature);
                    batch.step_slice = Some((a, rows.len()));
                    return tx.send(batch).is_ok();
                }
                tx.send(gather(&split, rows, opts.group_feature)).is_ok()
            };
            let mut pending: Vec<usize> = Vec::with_capacity(bs);
            let mut behind = DropBehind::new(opts.shuffle);
            for window in row_order(split.rows, &opts) {
                for &r in &window {
                    pending.push(r);
                    if pending.len() == bs {
                        if !emit(&pending) {
                            return;
                        }
                        behind.batch_made(&split, &pending);
                        pending.clear();
                    }
                }
                behind.window_read(&window);
            }
            if !pending.is_empty() {
                emit(&pending);
            }
            behind.batch_made(&split, &pending);
        })
        .expect("spawning the loader thread");
    BatchStream {
        rx,
        handle: Some(handle),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(shuffle: bool, window: usize, shard: (usize, usize)) -> LoaderOptions {
        LoaderOptions {
            batch_size: 4,
            shuffle,
            seed: 7,
            epoch: 0,
            window,
            queue: 2,
            shard,
            interleave_batches: false,
            split_batches: false,
            skip_batches: 0,
            group_feature: None,
        }
    }

    fn batches(split_rows: usize, o: LoaderOptions) -> Vec<Vec<f32>> {
        let split = Arc::new(PreparedSplit::for_tests(split_rows));
        spawn_loader(split, o).map(|b| b.labels).collect()
    }

    #[test]
    fn skipping_batches_resumes_the_same_order() {
        let all = batches(50, opts(true, 7, (1, 2)));
        let rest = batches(
            50,
            LoaderOptions {
                skip_batches: 3,
                ..opts(true, 7, (1, 2))
            },
        );
        assert_eq!(all.len(), 7);
        assert_eq!(rest, all[3..].to_vec());
    }

    #[test]
    fn interleaved_batches_are_the_one_process_batches_dealt_round_robin() {
        let one = batches(50, opts(false, 50, (0, 1)));
        for world in [2, 3] {
            for rank in 0..world {
                let got = batches(
                    50,
                    LoaderOptions {
                        interleave_batches: true,
                        ..opts(false, 50, (rank, world))
                    },
                );
                let want: Vec<_> = one.iter().skip(rank).step_by(world).cloned().collect();
                assert_eq!(got, want, "rank {rank} of {world}");
            }
        }
    }

    #[test]
    fn split_batches_are_the_one_process_batches_cut_among_the_ranks() {
        // 50 rows, one-process batches of 4 x world rows
        for world in [2, 3] {
            let one = batches(
                50,
                LoaderOptions {
                    batch_size: 4 * world,
                    ..opts(true, 7, (0, 1))
                },
            );
            let parts: Vec<Vec<Vec<f32>>> = (0..world)
                .map(|rank| {
                    batches(
                        50,
                        LoaderOptions {
                            split_batches: true,
                            ..opts(true, 7, (rank, world))
                        },
                    )
                })
                .collect();
            for (i, whole) in one.iter().enumerate() {
                let joined: Vec<f32> = parts
                    .iter()
                    .flat_map(|p| p.get(i).cloned().unwrap_or_default())
                    .collect();
                assert_eq!(&joined, whole, "batch {i} of {world} ranks");
            }
            // resuming after 3 steps skips 3 job-wide batches on every rank
            let rest = batches(
                50,
                LoaderOptions {
                    split_batches: true,
                    skip_batches: 3,
                    ..opts(true, 7, (1, world))
                },
            );
            assert_eq!(rest, parts[1][3..].to_vec());
        }
    }

    /// This process's resident KiB of the mapping that starts at `start`.
    fn mapped_kib(start: *const f32) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("reading smaps");
        let head = format!("{:x}-", start as usize);
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
        let rss = lines
            .find(|l| l.starts_with("Rss:"))
            .expect("the mapping's Rss line");
        rss.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn a_pass_gives_its_pages_back_and_reads_every_row_as_written() {
        for shuffle in [true, false] {
            // 40,000 labels (160 KB), windows of 8,192 rows (8 pages), batches of 1,000
            let split = Arc::new(PreparedSplit::for_tests(40_000));
            let sum: f32 = split.labels().iter().sum();
            assert!(sum > 0.0);
            let start = split.labels().as_ptr();
            assert!(mapped_kib(start) >= 100, "every page read is mapped");
            let o = LoaderOptions {
                batch_size: 1000,
                ..opts(shuffle, 8192, (0, 1))
            };
            let mut read: Vec<f32> = spawn_loader(split.clone(), o)
                .flat_map(|b| b.labels)
                .collect();
            assert_eq!(mapped_kib(start), 0, "shuffle {shuffle}: pages given back");
            read.sort_by(f32::total_cmp);
            let want: Vec<f32> = (0..40_000).map(|r| r as f32).collect();
            assert_eq!(
                read, want,
                "shuffle {shuffle}: every row once, values unchanged"
            );
        }
    }

    #[test]
    fn order_is_a_permutation_of_the_rank_slice() {
        for window in [3, 100] {
            let all: Vec<usize> = row_order(50, &opts(true, window, (1, 3)))
                .flatten()
                .collect();
            let mut sorted = all.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (16..33).collect::<Vec<_>>());
            assert_ne!(all, sorted, "shuffled");
            let again: Vec<usize> = row_order(50, &opts(true, window, (1, 3)))
                .flatten()
                .collect();
            assert_eq!(all, again, "same seed, same order");
        }
        let plain: Vec<usize> = row_order(10, &opts(false, 4, (0, 1))).flatten().collect();
        assert_eq!(plain, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn ranks_read_disjoint_slices_covering_all_rows() {
        let mut seen = vec![0; 103];
        for rank in 0..4 {
            for r in row_order(103, &opts(true, 10, (rank, 4))).flatten() {
                seen[r] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
    }
}
