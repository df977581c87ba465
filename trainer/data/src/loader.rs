//! Batches from a prepared split, made by a loader thread ahead of the training step and
//! handed over through a bounded crossbeam channel (so at most `queue` batches wait).
//!
//! Order: a rank reads its own contiguous slice of the rows. With shuffling on, the slice
//! is cut into windows of `window` rows; the order of windows and the order of rows inside
//! each window are permutations drawn from (seed, epoch), so the shuffle is repeatable and
//! its memory is one window of row indices, whatever the file size. The rows of a
//! shuffled window are read in copies of [`COPY_ROWS`] rows at a time, each read in file
//! order ([`PreparedSplit::copy_rows`]), so the window's mapped pages are not all resident
//! at once.

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

/// Rows a shuffled pass copies at once ([`PreparedSplit::copy_rows`]): 32 batches of
/// 2,048 rows, about 10 MiB for 26 ids and 13 dense values a row. Fewer rows walk the
/// window more often (each walk maps its pages again, minor faults); more rows keep more
/// memory.
const COPY_ROWS: usize = 1 << 16;

/// A batch this rank sends: its rows, and for a share of a job-wide batch where the
/// share sits in it.
struct Planned {
    rows: Vec<usize>,
    step_slice: Option<(usize, usize)>,
}

/// Which of the order's batches this rank sends, and which of its rows.
struct Cut {
    rank: usize,
    world: usize,
    interleave: bool,
    split: bool,
    skip: usize,
    /// Batches of the order seen, and of them this rank's.
    index: usize,
    mine: usize,
}

impl Cut {
    fn new(opts: &LoaderOptions) -> Self {
        Self {
            rank: opts.shard.0,
            world: opts.shard.1.max(1),
            interleave: opts.interleave_batches,
            split: opts.split_batches,
            skip: opts.skip_batches,
            index: 0,
            mine: 0,
        }
    }

    /// The next batch of the order, `rows`, as this rank sends it (None: not its own,
    /// skipped, or too small to give it a row).
    fn take(&mut self, rows: &[usize]) -> Option<Planned> {
        let ours = !self.interleave || self.index % self.world == self.rank;
        self.index += 1;
        if !ours {
            return None;
        }
        self.mine += 1;
        if self.mine <= self.skip {
            return None;
        }
        if !self.split {
            return Some(Planned {
                rows: rows.to_vec(),
                step_slice: None,
            });
        }
        let n = rows.len();
        let (a, b) = (n * self.rank / self.world, n * (self.rank + 1) / self.world);
        (a < b).then(|| Planned {
            rows: rows[a..b].to_vec(),
            step_slice: Some((a, n)),
        })
    }
}

/// Gathers planned batches and sends them. Unshuffled (or when no memory can be had for a
/// copy), each batch is read where it lies and its pages handed back
/// ([`PreparedSplit::release_rows`]). Shuffled, the batches wait until they hold
/// [`COPY_ROWS`] rows, which are then copied at once in file order
/// ([`PreparedSplit::copy_rows`]), so a pass keeps a copy of those rows resident rather
/// than every page of a window. Neither changes a value read.
struct Sender {
    split: Arc<PreparedSplit>,
    tx: crossbeam_channel::Sender<Batch>,
    shuffled: bool,
    group_feature: Option<usize>,
    planned: Vec<Planned>,
    planned_rows: usize,
}

impl Sender {
    /// Plans `batch`; false once the receiver is gone.
    fn push(&mut self, batch: Planned) -> bool {
        self.planned_rows += batch.rows.len();
        self.planned.push(batch);
        if !self.shuffled || self.planned_rows >= COPY_ROWS {
            return self.flush();
        }
        true
    }

    /// Gathers and sends every planned batch; false once the receiver is gone.
    fn flush(&mut self) -> bool {
        let planned = std::mem::take(&mut self.planned);
        self.planned_rows = 0;
        let copy = self.shuffled.then(|| {
            let rows: Vec<usize> = planned.iter().flat_map(|p| &p.rows).copied().collect();
            self.split.copy_rows(&rows)
        });
        let Some(Ok(copy)) = copy else {
            // unshuffled, or no memory for a copy: each batch read where it lies, then its
            // pages handed back
            return planned.iter().all(|p| {
                let sent = self.send(&self.split, &p.rows, p.step_slice);
                self.split.release_rows(span(&p.rows));
                sent
            });
        };
        let mut at = 0;
        planned.iter().all(|p| {
            let in_copy: Vec<usize> = (at..at + p.rows.len()).collect();
            at += p.rows.len();
            self.send(&copy, &in_copy, p.step_slice)
        })
    }

    fn send(
        &self,
        from: &PreparedSplit,
        rows: &[usize],
        step_slice: Option<(usize, usize)>,
    ) -> bool {
        let mut batch = gather(from, rows, self.group_feature);
        batch.step_slice = step_slice;
        self.tx.send(batch).is_ok()
    }
}

/// Starts a loader thread over `split`.
pub fn spawn_loader(split: Arc<PreparedSplit>, opts: LoaderOptions) -> BatchStream {
    let (tx, rx) = bounded(opts.queue.max(1));
    let handle = std::thread::Builder::new()
        .name(format!("loader-{}", split.name.as_str()))
        .spawn(move || {
            let bs = if opts.split_batches {
                opts.batch_size.max(1) * opts.shard.1.max(1)
            } else {
                opts.batch_size.max(1)
            };
            let mut cut = Cut::new(&opts);
            let mut sender = Sender {
                split: split.clone(),
                tx,
                shuffled: opts.shuffle,
                group_feature: opts.group_feature,
                planned: Vec::new(),
                planned_rows: 0,
            };
            let mut pending: Vec<usize> = Vec::with_capacity(bs);
            for window in row_order(split.rows, &opts) {
                for &r in &window {
                    pending.push(r);
                    if pending.len() == bs {
                        if let Some(batch) = cut.take(&pending) {
                            if !sender.push(batch) {
                                return;
                            }
                        }
                        pending.clear();
                    }
                }
            }
            if let Some(batch) = (!pending.is_empty()).then(|| cut.take(&pending)).flatten() {
                sender.push(batch);
            }
            sender.flush();
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
    fn a_shuffled_pass_maps_a_few_mib_of_a_window_at_a_time() {
        // 4M labels (16 MiB) in one window: read where they lie in shuffled order, every
        // page of the window would stay mapped until the window's last batch
        let rows = 1 << 22;
        let split = Arc::new(PreparedSplit::for_tests(rows));
        let start = split.labels().as_ptr();
        split.release_rows(0..rows);
        let o = LoaderOptions {
            batch_size: 8192,
            queue: 1,
            ..opts(true, rows, (0, 1))
        };
        let (mut most, mut read) = (0, Vec::with_capacity(rows));
        for batch in spawn_loader(split.clone(), o) {
            most = most.max(mapped_kib(start));
            read.extend(batch.labels);
        }
        // a walk maps its stride and the reach of a fault on either side
        assert!(most <= 6 << 10, "{most} KiB of 16 MiB mapped at once");
        assert_eq!(mapped_kib(start), 0, "pages given back");
        assert_ne!(
            read[..8],
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
            "shuffled"
        );
        read.sort_by(f32::total_cmp);
        assert!(
            read.iter().enumerate().all(|(r, &v)| v == r as f32),
            "every row once"
        );
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
