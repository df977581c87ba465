//! The collective operations the sharded engine needs from the ranks of a job, as a
//! trait: the trainer implements it over MPI (`MPI_Alltoallv`), and [`ThreadExchange`]
//! implements it over channels between threads, so the sharded engine's exchanges are
//! tested here, in-process, for any world size, without MPI.

use std::sync::mpsc::{channel, Receiver, Sender};

use crate::TableError;

/// Variable-sized all-to-all among the ranks of a job. Every rank calls the same
/// operations in the same order (they are collective).
pub trait Exchange {
    /// This rank, in `0..world_size()`.
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Sends `send[d]` to rank `d`; returns what every rank sent to this one, indexed by
    /// the sending rank.
    fn all_to_all_u64(&self, send: Vec<Vec<u64>>) -> Result<Vec<Vec<u64>>, TableError>;
    /// As [`Exchange::all_to_all_u64`], for floats.
    fn all_to_all_f32(&self, send: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, TableError>;
}

/// The trivial exchange of a one-rank job.
#[derive(Debug, Default, Clone, Copy)]
pub struct SoloExchange;

impl Exchange for SoloExchange {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_to_all_u64(&self, send: Vec<Vec<u64>>) -> Result<Vec<Vec<u64>>, TableError> {
        check_len(send.len(), 1)?;
        Ok(send)
    }
    fn all_to_all_f32(&self, send: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, TableError> {
        check_len(send.len(), 1)?;
        Ok(send)
    }
}

fn check_len(got: usize, world: usize) -> Result<(), TableError> {
    if got == world {
        Ok(())
    } else {
        Err(TableError::SizeMismatch {
            what: "all-to-all send buffers (one per rank)".into(),
            expected: world,
            got,
        })
    }
}

enum Message {
    U64(Vec<u64>),
    F32(Vec<f32>),
}

/// One rank of an in-process job whose ranks are threads: one FIFO channel per ordered
/// pair of ranks, so collective calls made in the same order on every rank match up.
pub struct ThreadExchange {
    rank: usize,
    /// `to[d]`: channel into rank `d`'s inbox from this rank.
    to: Vec<Sender<Message>>,
    /// `from[s]`: this rank's inbox from rank `s`.
    from: Vec<Receiver<Message>>,
}

impl ThreadExchange {
    /// The `n` connected ranks of a job; hand one to each thread.
    pub fn world(n: usize) -> Vec<ThreadExchange> {
        // pairs[s][d] = channel from s to d
        let mut senders: Vec<Vec<Option<Sender<Message>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut receivers: Vec<Vec<Option<Receiver<Message>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        for (s, row) in senders.iter_mut().enumerate() {
            for (d, slot) in row.iter_mut().enumerate() {
                let (tx, rx) = channel();
                *slot = Some(tx);
                receivers[d][s] = Some(rx);
            }
        }
        senders
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(rank, (to, from))| ThreadExchange {
                rank,
                to: to.into_iter().flatten().collect(),
                from: from.into_iter().flatten().collect(),
            })
            .collect()
    }

    fn exchange(&self, send: Vec<Message>) -> Result<Vec<Message>, TableError> {
        check_len(send.len(), self.to.len())?;
        for (d, m) in send.into_iter().enumerate() {
            self.to[d].send(m).map_err(|_| {
                TableError::Exchange(format!("rank {}: rank {d} has gone away", self.rank))
            })?;
        }
        self.from
            .iter()
            .enumerate()
            .map(|(s, rx)| {
                rx.recv().map_err(|_| {
                    TableError::Exchange(format!("rank {}: rank {s} has gone away", self.rank))
                })
            })
            .collect()
    }
}

impl Exchange for ThreadExchange {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.to.len()
    }
    fn all_to_all_u64(&self, send: Vec<Vec<u64>>) -> Result<Vec<Vec<u64>>, TableError> {
        self.exchange(send.into_iter().map(Message::U64).collect())?
            .into_iter()
            .enumerate()
            .map(|(s, m)| match m {
                Message::U64(v) => Ok(v),
                Message::F32(_) => Err(TableError::Exchange(format!(
                    "rank {}: rank {s} sent floats where ids were expected (collectives out of order)",
                    self.rank
                ))),
            })
            .collect()
    }
    fn all_to_all_f32(&self, send: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, TableError> {
        self.exchange(send.into_iter().map(Message::F32).collect())?
            .into_iter()
            .enumerate()
            .map(|(s, m)| match m {
                Message::F32(v) => Ok(v),
                Message::U64(_) => Err(TableError::Exchange(format!(
                    "rank {}: rank {s} sent ids where floats were expected (collectives out of order)",
                    self.rank
                ))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_ranks_exchange_in_order() {
        let world = ThreadExchange::world(3);
        let got: Vec<Vec<Vec<u64>>> = std::thread::scope(|s| {
            let handles: Vec<_> = world
                .into_iter()
                .map(|ex| {
                    s.spawn(move || {
                        let r = ex.rank() as u64;
                        // rank r sends [r, d] to rank d, twice
                        let first = ex
                            .all_to_all_u64((0..3).map(|d| vec![r, d]).collect())
                            .unwrap();
                        let second = ex
                            .all_to_all_u64((0..3).map(|d| vec![10 + r, d]).collect())
                            .unwrap();
                        assert_eq!(second[2], vec![12, r]);
                        first
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (d, recv) in got.iter().enumerate() {
            for (s, m) in recv.iter().enumerate() {
                assert_eq!(m, &vec![s as u64, d as u64]);
            }
        }
    }

    #[test]
    fn wrong_buffer_count_is_an_error() {
        let e = SoloExchange
            .all_to_all_f32(vec![vec![], vec![]])
            .unwrap_err();
        assert!(e.to_string().contains("one per rank"), "{e}");
    }
}
