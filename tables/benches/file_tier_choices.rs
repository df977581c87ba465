//! The two design choices of the file tier (`src/file_rows.rs`), measured rather than
//! assumed:
//!
//! 1. Cache policy, by hit rate alone (a simulation, no I/O): a Zipf(1.1) trace over
//!    10 million rows, in steps of 4,096 ids deduplicated per step (a forward reads its
//!    distinct rows), against caches of 1% and 10% of the rows: 16- and 32-way
//!    set-associative LRU (the tier's), 16-way set-associative LFU, an exact fully
//!    associative LRU, and the static cache of the most popular rows for reference.
//! 2. Access method, by throughput: an 8 GiB file of 128-byte records (dim 16 weights +
//!    16 Adagrad state, all written, no holes), updated record by record (read, Adagrad
//!    step, write back) with explicit `pread`/`pwrite` and through a `memmap2` shared
//!    mapping (with and without `MADV_RANDOM`), on the misses of a 1%-of-rows LRU cache
//!    in front of Zipf(1.1) ids and on uniform ids. Page cache states: warm with the
//!    whole file as its sequential write left it (large folios on recent kernels, which
//!    make each small write dirty far more than 4 KiB of bookkeeping), dropped (cold), and
//!    warm again by re-running the cold pass's records (the pages as that method brought
//!    them in). Each run reports rows/s, MB/s of records, page faults, bytes the disk
//!    read, and the process's RSS (mapped file pages count as RssFile).
//!
//!     cargo bench -p shardrec-tables --bench file_tier_choices -- [sim] [io]
//!
//! Cold runs need root (`/proc/sys/vm/drop_caches`). Environment: FILE_TIER_PATH (the
//! scratch file, default /tmp/file_tier_choices.bin, removed at the end), FILE_TIER_GIB
//! (8), FILE_TIER_RECORDS (records per run, 2,000,000), FILE_TIER_SECS (a run's time
//! limit, 20: a cold run stops there and reports the rate of what it did).

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use memmap2::{Advice, MmapMut};
use shardrec_tables::mix64;

type Res<T> = Result<T, Box<dyn Error>>;

const SEED: u64 = 0x5EED_F11E_71E5;
const ZIPF_S: f64 = 1.1;
/// Ids a training step looks up in one table (deduplicated before the cache sees them).
const STEP_IDS: usize = 4096;
const DIM: usize = 16;
const REC_FLOATS: usize = 2 * DIM;
const REC_BYTES: usize = REC_FLOATS * 4;

// ---------------------------------------------------------------- random numbers, Zipf

/// SplitMix64: a counter stepped by the golden ratio, through the crate's finaliser.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Zipf over ranks `0..n` (rank 0 the most popular), P(rank k) ∝ (k + 1)^-s, sampled by
/// inverting its exact CDF; a guide table narrows each binary search to a few entries.
struct Zipf {
    cdf: Vec<f64>,
    guide: Vec<u32>,
}

const GUIDE: usize = 1 << 20;

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0f64;
        for k in 0..n {
            total += ((k + 1) as f64).powf(-s);
            cdf.push(total);
        }
        cdf.iter_mut().for_each(|c| *c /= total);
        cdf[n - 1] = 1.0;
        // guide[g]: the first rank whose cdf reaches g / GUIDE
        let mut guide = Vec::with_capacity(GUIDE + 1);
        let mut k = 0usize;
        for g in 0..=GUIDE {
            let edge = g as f64 / GUIDE as f64;
            while cdf[k] < edge {
                k += 1;
            }
            guide.push(k as u32);
        }
        Self { cdf, guide }
    }

    fn sample(&self, u: f64) -> u64 {
        let g = (u * GUIDE as f64) as usize;
        let (lo, hi) = (self.guide[g] as usize, self.guide[g + 1] as usize);
        // the answer, the first rank with cdf > u, lies in lo..=hi
        (lo + self.cdf[lo..=hi].partition_point(|&c| c <= u)) as u64
    }
}

/// Feeds `visit` steps of `STEP_IDS` Zipf ranks, each sorted and deduplicated, until it
/// returns false.
fn zipf_steps(z: &Zipf, rng: &mut Rng, mut visit: impl FnMut(&[u64]) -> bool) {
    let mut step = Vec::with_capacity(STEP_IDS);
    loop {
        step.clear();
        step.extend((0..STEP_IDS).map(|_| z.sample(rng.unit())));
        step.sort_unstable();
        step.dedup();
        if !visit(&step) {
            return;
        }
    }
}

// ---------------------------------------------------------------- cache policies

/// What a simulated cache does on a lookup: true on a hit (a miss brings the row in).
trait Policy {
    fn access(&mut self, row: u64) -> bool;
}

const EMPTY: u64 = u64::MAX;

/// `sets x ways` slots; the set of a row is `mix64(row) % sets`, as in `file_rows.rs`.
/// LRU evicts the way used longest ago; LFU the way with the fewest hits since it came
/// in, ties to the one used longest ago. Empty ways are taken first.
struct SetAssoc {
    ways: usize,
    sets: usize,
    lfu: bool,
    tags: Vec<u64>,
    last_used: Vec<u64>,
    count: Vec<u32>,
    clock: u64,
}

impl SetAssoc {
    fn new(capacity: usize, ways: usize, lfu: bool) -> Self {
        let sets = capacity.div_ceil(ways).max(1);
        let slots = sets * ways;
        Self {
            ways,
            sets,
            lfu,
            tags: vec![EMPTY; slots],
            last_used: vec![0; slots],
            count: vec![0; slots],
            clock: 0,
        }
    }
}

impl Policy for SetAssoc {
    fn access(&mut self, row: u64) -> bool {
        self.clock += 1;
        let base = (mix64(row) % self.sets as u64) as usize * self.ways;
        let set = base..base + self.ways;
        if let Some(s) = set.clone().find(|&s| self.tags[s] == row) {
            self.last_used[s] = self.clock;
            self.count[s] = self.count[s].saturating_add(1);
            return true;
        }
        let victim = set
            .min_by_key(|&s| {
                let taken = self.tags[s] != EMPTY;
                let uses = if self.lfu { self.count[s] } else { 0 };
                (taken, uses, self.last_used[s])
            })
            .unwrap_or(base);
        self.tags[victim] = row;
        self.last_used[victim] = self.clock;
        self.count[victim] = 1;
        false
    }
}

/// Exact fully associative LRU: a doubly linked list of slots, most recent at the head,
/// and a row-to-slot index (rows are dense, so a vector serves as the map).
struct FullLru {
    slot_of: Vec<u32>,
    row_of: Vec<u64>,
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    capacity: usize,
}

const NIL: u32 = u32::MAX;

impl FullLru {
    fn new(rows: usize, capacity: usize) -> Self {
        Self {
            slot_of: vec![NIL; rows],
            row_of: Vec::with_capacity(capacity),
            prev: Vec::with_capacity(capacity),
            next: Vec::with_capacity(capacity),
            head: NIL,
            tail: NIL,
            capacity,
        }
    }

    fn unlink(&mut self, s: u32) {
        let (p, n) = (self.prev[s as usize], self.next[s as usize]);
        match p {
            NIL => self.head = n,
            p => self.next[p as usize] = n,
        }
        match n {
            NIL => self.tail = p,
            n => self.prev[n as usize] = p,
        }
    }

    fn push_front(&mut self, s: u32) {
        self.prev[s as usize] = NIL;
        self.next[s as usize] = self.head;
        match self.head {
            NIL => self.tail = s,
            h => self.prev[h as usize] = s,
        }
        self.head = s;
    }
}

impl Policy for FullLru {
    fn access(&mut self, row: u64) -> bool {
        let s = self.slot_of[row as usize];
        if s != NIL {
            self.unlink(s);
            self.push_front(s);
            return true;
        }
        let s = if self.row_of.len() < self.capacity {
            self.row_of.push(row);
            self.prev.push(NIL);
            self.next.push(NIL);
            (self.row_of.len() - 1) as u32
        } else {
            let t = self.tail;
            self.unlink(t);
            self.slot_of[self.row_of[t as usize] as usize] = NIL;
            self.row_of[t as usize] = row;
            t
        };
        self.slot_of[row as usize] = s;
        self.push_front(s);
        false
    }
}

/// The `capacity` most popular rows, fixed (ranks are rows in the simulation): the best
/// any cache can do on a stationary trace without knowing the future.
struct StaticTop(u64);

impl Policy for StaticTop {
    fn access(&mut self, row: u64) -> bool {
        row < self.0
    }
}

/// Hit rate over the trace after its first `warm` lookups, and ns per lookup.
fn hit_rate(p: &mut dyn Policy, trace: &[u32], warm: usize) -> (f64, f64) {
    let t = Instant::now();
    let mut hits = 0u64;
    for (i, &row) in trace.iter().enumerate() {
        let hit = p.access(u64::from(row));
        hits += u64::from(hit && i >= warm);
    }
    let ns = t.elapsed().as_nanos() as f64 / trace.len() as f64;
    (hits as f64 / (trace.len() - warm) as f64, ns)
}

fn simulate_policies() {
    let (rows, ids) = (10_000_000usize, 50_000_000usize);
    let t = Instant::now();
    let zipf = Zipf::new(rows, ZIPF_S);
    let mut rng = Rng(SEED);
    let mut trace: Vec<u32> = Vec::with_capacity(ids);
    let mut drawn = 0;
    zipf_steps(&zipf, &mut rng, |step| {
        trace.extend(step.iter().map(|&r| r as u32));
        drawn += STEP_IDS;
        drawn < ids
    });
    drop(zipf);
    let warm = trace.len() / 5;
    println!(
        "## Cache policy: hit rate\n\nZipf({ZIPF_S}) over {rows} rows, {drawn} ids in steps of \
         {STEP_IDS}, {} distinct-per-step lookups (trace built in {:.1} s); hit rate over \
         the lookups after the first {warm} (warm-up).\n",
        trace.len(),
        t.elapsed().as_secs_f64()
    );
    println!("| policy | cache 1% hit | ns/lookup | cache 10% hit | ns/lookup |");
    println!("|---|---|---|---|---|");
    type Make = fn(usize, usize) -> Box<dyn Policy>;
    let policies: [(&str, Make); 5] = [
        ("16-way set-assoc LRU (file_rows.rs)", |_, c| {
            Box::new(SetAssoc::new(c, 16, false))
        }),
        ("32-way set-assoc LRU", |_, c| {
            Box::new(SetAssoc::new(c, 32, false))
        }),
        ("16-way set-assoc LFU (ties: LRU)", |_, c| {
            Box::new(SetAssoc::new(c, 16, true))
        }),
        ("fully associative exact LRU", |n, c| {
            Box::new(FullLru::new(n, c))
        }),
        ("static top-C rows (popularity oracle)", |_, c| {
            Box::new(StaticTop(c as u64))
        }),
    ];
    for (name, make) in policies {
        let mut line = format!("| {name} |");
        for capacity in [rows / 100, rows / 10] {
            let (rate, ns) = hit_rate(make(rows, capacity).as_mut(), &trace, warm);
            line += &format!(" {:.2}% | {ns:.1} |", rate * 100.0);
        }
        println!("{line}");
    }
    println!();
}

// ---------------------------------------------------------------- the file and the runs

/// One Adagrad step on a record held as bytes (weights, then their accumulators).
fn update_record(rec: &mut [u8; REC_BYTES], grad: f32) {
    let (w, s) = rec.split_at_mut(DIM * 4);
    for (wb, sb) in w.chunks_exact_mut(4).zip(s.chunks_exact_mut(4)) {
        let acc = f32::from_ne_bytes([sb[0], sb[1], sb[2], sb[3]]) + grad * grad;
        let wt = f32::from_ne_bytes([wb[0], wb[1], wb[2], wb[3]]) - 0.01 * grad / acc.sqrt();
        sb.copy_from_slice(&acc.to_ne_bytes());
        wb.copy_from_slice(&wt.to_ne_bytes());
    }
}

/// The scratch file; removed when dropped, also on an early error.
struct Scratch {
    path: PathBuf,
    file: File,
    rows: u64,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            eprintln!("could not remove {}: {e}", self.path.display());
        }
    }
}

/// Writes every record (weights 0.01, accumulators 0.1) and syncs; prints the rate.
fn write_file(path: &Path, rows: u64) -> Res<Scratch> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let scratch = Scratch {
        path: path.to_path_buf(),
        file,
        rows,
    };
    let mut rec = [0u8; REC_BYTES];
    for (i, b) in rec.chunks_exact_mut(4).enumerate() {
        b.copy_from_slice(&if i < DIM { 0.01f32 } else { 0.1 }.to_ne_bytes());
    }
    let chunk: Vec<u8> = rec.iter().copied().cycle().take(8 << 20).collect();
    let per_chunk = (chunk.len() / REC_BYTES) as u64;
    let t = Instant::now();
    let mut out = &scratch.file;
    for start in (0..rows).step_by(per_chunk as usize) {
        let n = per_chunk.min(rows - start) as usize * REC_BYTES;
        out.write_all(&chunk[..n])
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    scratch
        .file
        .sync_all()
        .map_err(|e| format!("syncing {}: {e}", path.display()))?;
    let secs = t.elapsed().as_secs_f64();
    let mb = (rows * REC_BYTES as u64) as f64 / 1e6;
    println!(
        "Wrote and synced {} ({mb:.0} MB) in {secs:.1} s: {:.0} MB/s.",
        path.display(),
        mb / secs
    );
    Ok(scratch)
}

/// Reads the whole file once (from the page cache if it is there): the warm runs' start.
fn read_through(s: &Scratch) -> Res<f64> {
    let t = Instant::now();
    let mut buf = vec![0u8; 8 << 20];
    let total = s.rows * REC_BYTES as u64;
    let mut off = 0;
    while off < total {
        let n = (buf.len() as u64).min(total - off) as usize;
        s.file
            .read_exact_at(&mut buf[..n], off)
            .map_err(|e| format!("reading {} at {off}: {e}", s.path.display()))?;
        off += n as u64;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Writes back dirty pages and empties the page cache; false (with a message) if the
/// kernel refused.
fn drop_caches() -> bool {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    match std::fs::write("/proc/sys/vm/drop_caches", "3\n") {
        Ok(()) => true,
        Err(e) => {
            eprintln!("dropping the page cache failed ({e}): the cold runs are not cold");
            false
        }
    }
}

/// The process's memory and I/O counters.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    vm_rss_kb: u64,
    rss_anon_kb: u64,
    rss_file_kb: u64,
    major_faults: u64,
    minor_faults: u64,
    disk_read_bytes: u64,
    /// System-wide, from /proc/meminfo: dirty page cache, page cache in PMD-size
    /// (2 MiB) folios, and how much of that is mapped with PMD entries.
    dirty_kb: u64,
    file_huge_kb: u64,
    file_pmd_mapped_kb: u64,
}

fn field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn counters() -> Counters {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    // SAFETY: getrusage fills the zeroed struct it is given and nothing else.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    Counters {
        vm_rss_kb: field(&status, "VmRSS:"),
        rss_anon_kb: field(&status, "RssAnon:"),
        rss_file_kb: field(&status, "RssFile:"),
        major_faults: usage.ru_majflt as u64,
        minor_faults: usage.ru_minflt as u64,
        disk_read_bytes: field(&io, "read_bytes:"),
        dirty_kb: field(&mem, "Dirty:"),
        file_huge_kb: field(&mem, "FileHugePages:"),
        file_pmd_mapped_kb: field(&mem, "FilePmdMapped:"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    Pread,
    Mmap,
    MmapRandom,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Pread => "pread + pwrite",
            Method::Mmap => "mmap memcpy",
            Method::MmapRandom => "mmap memcpy, MADV_RANDOM",
        }
    }
}

/// What the measured pass of a run did: records updated, seconds, seconds to flush the
/// dirty pages after, and the counters before and after it (any mapping still in place).
struct Run {
    done: usize,
    secs: f64,
    flush_secs: f64,
    before: Counters,
    after: Counters,
}

const CHECK_EVERY: usize = 1024;

/// Updates the records of `rows` in order with `one` until `limit`; returns how many
/// it did and the seconds it took.
fn pass(rows: &[u64], limit: Instant, mut one: impl FnMut(u64) -> Res<()>) -> Res<(usize, f64)> {
    let t = Instant::now();
    let mut done = 0;
    for (i, &row) in rows.iter().enumerate() {
        if i % CHECK_EVERY == 0 && Instant::now() > limit {
            break;
        }
        one(row)?;
        done = i + 1;
    }
    Ok((done, t.elapsed().as_secs_f64()))
}

/// `passes` passes of pread, update, pwrite over `rows`; the last one is measured.
fn run_pread(s: &Scratch, rows: &[u64], limit: Instant, passes: usize) -> Res<Run> {
    let mut rec = [0u8; REC_BYTES];
    let mut one = |row: u64| -> Res<()> {
        let off = row * REC_BYTES as u64;
        s.file
            .read_exact_at(&mut rec, off)
            .map_err(|e| format!("pread at {off}: {e}"))?;
        update_record(&mut rec, 0.5);
        s.file
            .write_all_at(&rec, off)
            .map_err(|e| format!("pwrite at {off}: {e}"))?;
        Ok(())
    };
    for _ in 1..passes {
        pass(rows, limit, &mut one)?;
    }
    let before = counters();
    let (done, secs) = pass(rows, limit, &mut one)?;
    let after = counters();
    let t = Instant::now();
    s.file.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
    Ok(Run {
        done,
        secs,
        flush_secs: t.elapsed().as_secs_f64(),
        before,
        after,
    })
}

/// `passes` passes of copy out, update, copy back over `rows` through one fresh
/// shared mapping of the file; the last one is measured.
fn run_mmap(s: &Scratch, rows: &[u64], limit: Instant, random: bool, passes: usize) -> Res<Run> {
    // SAFETY: the file is this process's private scratch file; nothing truncates or
    // writes it while the mapping lives (the pread runs use it only after the mapping
    // is dropped), and the mapping is only read and written as plain bytes.
    let mut map = unsafe { MmapMut::map_mut(&s.file) }.map_err(|e| format!("mmap: {e}"))?;
    if random {
        map.advise(Advice::Random)
            .map_err(|e| format!("madvise(MADV_RANDOM): {e}"))?;
    }
    let mut rec = [0u8; REC_BYTES];
    let mut one = |row: u64| -> Res<()> {
        let at = row as usize * REC_BYTES;
        rec.copy_from_slice(&map[at..at + REC_BYTES]);
        update_record(&mut rec, 0.5);
        map[at..at + REC_BYTES].copy_from_slice(&rec);
        Ok(())
    };
    for _ in 1..passes {
        pass(rows, limit, &mut one)?;
    }
    let before = counters();
    let (done, secs) = pass(rows, limit, &mut one)?;
    let after = counters();
    let t = Instant::now();
    map.flush().map_err(|e| format!("msync: {e}"))?;
    Ok(Run {
        done,
        secs,
        flush_secs: t.elapsed().as_secs_f64(),
        before,
        after,
    })
}

fn print_run(stream: &str, method: Method, cache: &str, r: &Run) {
    let rate = r.done as f64 / r.secs;
    let (b, a) = (r.before, r.after);
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "| {stream} | {} | {cache} | {} | {:.2} | {:.0} | {:.1} | {:.2} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} (+{:.0}) | {:.0} | {:.0} | {:.0} |",
        method.name(),
        r.done,
        r.secs,
        rate,
        rate * REC_BYTES as f64 / 1e6,
        r.flush_secs,
        a.major_faults - b.major_faults,
        a.minor_faults - b.minor_faults,
        (a.disk_read_bytes - b.disk_read_bytes) as f64 / 1e6,
        mb(a.vm_rss_kb),
        mb(a.rss_anon_kb),
        mb(a.rss_file_kb),
        mb(a.rss_file_kb.saturating_sub(b.rss_file_kb)),
        mb(a.dirty_kb),
        mb(a.file_huge_kb),
        mb(a.file_pmd_mapped_kb),
    );
}

// ---------------------------------------------------------------- the id streams

/// A bijection on `0..n` that scatters Zipf ranks over the file, so hot rows do not
/// share pages (as hashed ids do not).
fn scatter(rank: u64, n: u64) -> u64 {
    // 2654435761 is prime, so coprime with n = GiB x 2^23 for any GiB below it
    ((u128::from(rank) * 2_654_435_761 + 12_345) % u128::from(n)) as u64
}

/// `count` rows that miss a 16-way LRU cache of 1% of the rows in front of Zipf steps
/// (the cache warmed first on 5 million ids), and the cache's hit rate while collecting.
fn miss_stream(rows: u64, count: usize) -> (Vec<u64>, f64) {
    let zipf = Zipf::new(rows as usize, ZIPF_S);
    let mut cache = SetAssoc::new(rows as usize / 100, 16, false);
    let mut rng = Rng(SEED ^ 0xF11E);
    let (mut warm, mut lookups) = (0usize, 0u64);
    let mut misses = Vec::with_capacity(count);
    zipf_steps(&zipf, &mut rng, |step| {
        for &rank in step {
            let row = scatter(rank, rows);
            let hit = cache.access(row);
            if warm < 5_000_000 {
                warm += 1;
            } else {
                lookups += 1;
                if !hit && misses.len() < count {
                    misses.push(row);
                }
            }
        }
        misses.len() < count
    });
    let hit = 1.0 - misses.len() as f64 / lookups as f64;
    (misses, hit)
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> Res<T> {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{key}={v} does not parse").into()),
        Err(_) => Ok(default),
    }
}

/// `passes` passes of `method` over `ids` (the last one measured), stopped at `limit`.
fn run(method: Method, s: &Scratch, ids: &[u64], limit: Duration, passes: usize) -> Res<Run> {
    let limit = Instant::now() + limit;
    match method {
        Method::Pread => run_pread(s, ids, limit, passes),
        m => run_mmap(s, ids, limit, m == Method::MmapRandom, passes),
    }
}

const METHODS: [Method; 3] = [Method::Pread, Method::Mmap, Method::MmapRandom];

/// The runs on a page cache that holds the whole file as the sequential write left it.
fn streamed_runs(s: &Scratch, streams: &[(&str, &[u64])], limit: Duration) -> Res<()> {
    println!(
        "Read the whole file through once in {:.1} s (all of it in the page cache).\n",
        read_through(s)?
    );
    println!(
        "| ids | method | page cache | records | s | rows/s | MB/s | flush s | major faults | \
         minor faults | disk read MB | VmRSS MB | RssAnon MB | RssFile MB (+run) | \
         Dirty MB | FileHugePages MB | FilePmdMapped MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &(stream, ids) in streams {
        for method in METHODS {
            let r = run(method, s, ids, limit, 1)?;
            print_run(stream, method, "warm: whole file, streamed", &r);
        }
    }
    Ok(())
}

/// For each method: a pass with the page cache dropped, then the same records again
/// (the pages that pass cached, as that method left them): once, and twice with the
/// second pass measured (for mmap, through a mapping whose page tables the first pass
/// filled, as a long-lived mapping would have them).
fn cold_runs(s: &Scratch, streams: &[(&str, &[u64])], limit: Duration) -> Res<()> {
    for &(stream, ids) in streams {
        for method in METHODS {
            let cache = if drop_caches() {
                "cold"
            } else {
                "cold (drop failed)"
            };
            let first = run(method, s, ids, limit, 1)?;
            print_run(stream, method, cache, &first);
            let ids = &ids[..first.done];
            let again = run(method, s, ids, limit, 1)?;
            print_run(stream, method, "warm: re-run of the cold pass", &again);
            let second = run(method, s, ids, limit, 2)?;
            print_run(stream, method, "warm: re-run, 2nd pass", &second);
        }
    }
    Ok(())
}

fn compare_access_methods() -> Res<()> {
    let path = PathBuf::from(env_or(
        "FILE_TIER_PATH",
        "/tmp/file_tier_choices.bin".to_string(),
    )?);
    let gib: u64 = env_or("FILE_TIER_GIB", 8)?;
    let count: usize = env_or("FILE_TIER_RECORDS", 2_000_000)?;
    let limit = Duration::from_secs(env_or("FILE_TIER_SECS", 20)?);
    let rows = (gib << 30) / REC_BYTES as u64;
    println!("## Access method: read-modify-write of {REC_BYTES}-byte records\n");
    let t = Instant::now();
    let (misses, hit) = miss_stream(rows, count);
    let mut rng = Rng(SEED ^ 0x0411_F0E4);
    let uniform: Vec<u64> = (0..count).map(|_| rng.next_u64() % rows).collect();
    println!(
        "{rows} rows. Streams of {count} rows: the misses of a 1%-of-rows 16-way LRU on \
         Zipf({ZIPF_S}) (hit rate {:.1}%), and uniform rows ({:.1} s to draw). A run stops \
         after {} s. MB/s: record bytes updated (each read once and written once). \
         Faults, disk reads and flush: the measured pass; RSS and the system-wide page-cache \
         columns: at its end.",
        hit * 100.0,
        t.elapsed().as_secs_f64(),
        limit.as_secs()
    );
    let scratch = write_file(&path, rows)?;
    let streams: [(&str, &[u64]); 2] = [("Zipf misses", &misses), ("uniform", &uniform)];
    streamed_runs(&scratch, &streams, limit)?;
    cold_runs(&scratch, &streams, limit)
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let all = args.is_empty();
    let t = Instant::now();
    if all || args.iter().any(|a| a == "sim") {
        simulate_policies();
    }
    if all || args.iter().any(|a| a == "io") {
        compare_access_methods()?;
    }
    println!("\nTotal {:.0} s.", t.elapsed().as_secs_f64());
    Ok(())
}
