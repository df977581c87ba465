//! The device cache of fused tables (`embedding.gpu_cache_bytes`, TorchRec's UVM
//! caching): a group's tensors hold the hot rows in slots, [`RowCache`] says which, and
//! the rows themselves stay in the host shards (RAM or the file tier), which is the
//! hierarchy GPU -> RAM -> file. A step's evicted slots go back to the host in one
//! batched copy, its missed rows come in in one more; the host is current for every row
//! not cached, so evaluation reads cached rows from the device and the rest from the
//! host. Checkpoints and saved models read the host: [`FusedEmbeddings::write_back`]
//! first.

use shardrec_tables::{GroupStep, TableError};
use tch::{Device, Kind, Tensor};

use super::{torch, upload_f32, upload_i64, FusedEmbeddings};

impl FusedEmbeddings {
    /// Places group `g`'s distinct fused `rows` of a training step in its cache, moving
    /// what must move; returns their slots.
    pub(super) fn place_in_cache(
        &mut self,
        g: usize,
        rows: &[i64],
    ) -> Result<Vec<i64>, TableError> {
        let stage = self.stages;
        let Some(caches) = self.caches.as_mut() else {
            return Ok(rows.to_vec());
        };
        let wanted: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
        let placed = caches[g].place(&wanted, stage)?;
        self.copy_out(g, &placed.write_back)?;
        self.copy_in(g, &placed.load)?;
        Ok(placed.slots)
    }

    /// Writes every cached row back to the host shards (they stay cached).
    pub fn write_back(&mut self) -> Result<(), TableError> {
        let Some(caches) = &self.caches else {
            return Ok(());
        };
        let resident: Vec<_> = caches.iter().map(|c| c.resident()).collect();
        for (g, moves) in resident.iter().enumerate() {
            self.copy_out(g, moves)?;
        }
        Ok(())
    }

    /// Forgets the cached rows: the host's were replaced (the best model restored).
    pub fn forget_cache(&mut self) {
        for c in self.caches.iter_mut().flatten() {
            c.clear();
        }
    }

    /// Copies the (slot, fused row) pairs of group `g` from the device to the host.
    fn copy_out(&mut self, g: usize, moves: &[(u32, u64)]) -> Result<(), TableError> {
        if moves.is_empty() {
            return Ok(());
        }
        let mut moves = moves.to_vec();
        moves.sort_unstable_by_key(|m| m.1);
        let t = &self.groups[g];
        let slots: Vec<i64> = moves.iter().map(|m| m.0 as i64).collect();
        let idx = upload_i64(&slots, self.device);
        let records = Tensor::f_cat(
            &[
                t.weights.f_index_select(0, &idx).map_err(torch)?,
                t.state.f_index_select(0, &idx).map_err(torch)?,
            ],
            1,
        )
        .and_then(|r| r.f_to_device(Device::Cpu))
        .and_then(|r| r.f_reshape([-1]))
        .map_err(torch)?;
        let records = Vec::<f32>::try_from(&records).map_err(torch)?;
        let rows: Vec<u64> = moves.iter().map(|m| m.1).collect();
        let record = records.len() / moves.len();
        for (t, local, range) in self.table_runs(g, &rows) {
            let part = &records[range.start * record..range.end * record];
            self.host.shards_mut()[t][0].write_records(&local, part)?;
        }
        Ok(())
    }

    /// Loads the (slot, fused row) pairs of group `g` from the host into the device's
    /// slots, one batched copy.
    fn copy_in(&mut self, g: usize, moves: &[(u32, u64)]) -> Result<(), TableError> {
        if moves.is_empty() {
            return Ok(());
        }
        let mut moves = moves.to_vec();
        moves.sort_unstable_by_key(|m| m.1);
        let rows: Vec<u64> = moves.iter().map(|m| m.1).collect();
        let mut records = Vec::new();
        for (t, local, _) in self.table_runs(g, &rows) {
            records.extend(self.host.shards()[t][0].read_records(&local)?);
        }
        let t = &mut self.groups[g];
        let (dim, sw) = (t.weights.size()[1], t.state.size()[1]);
        let slots: Vec<i64> = moves.iter().map(|m| m.0 as i64).collect();
        let idx = upload_i64(&slots, self.device);
        let loaded = upload_f32(&records, self.device)
            .f_view([moves.len() as i64, dim + sw])
            .map_err(torch)?;
        let _no_grad = tch::no_grad_guard();
        let _ = t
            .weights
            .f_index_copy_(0, &idx, &loaded.narrow(1, 0, dim))
            .map_err(torch)?;
        if sw > 0 {
            let _ = t
                .state
                .f_index_copy_(0, &idx, &loaded.narrow(1, dim, sw))
                .map_err(torch)?;
        }
        Ok(())
    }

    /// Ascending fused `rows` of group `g` cut by table: (table, its local rows, the
    /// range of `rows` they are).
    fn table_runs(&self, g: usize, rows: &[u64]) -> Vec<(usize, Vec<u64>, std::ops::Range<usize>)> {
        let group = &self.layout.groups[g];
        let mut runs = Vec::new();
        let mut start = 0;
        while start < rows.len() {
            let k = group.first_rows.partition_point(|&f| f <= rows[start]) - 1;
            let end = group.first_rows.get(k + 1).copied().unwrap_or(u64::MAX);
            let len = rows[start..].partition_point(|&r| r < end);
            let first = group.first_rows[k];
            let local = rows[start..start + len].iter().map(|r| r - first).collect();
            runs.push((group.tables[k], local, start..start + len));
            start += len;
        }
        runs
    }

    /// Evaluation under a device cache: each group's distinct rows of `steps`, the
    /// cached ones from the device, the others from the host.
    pub(super) fn cached_or_host_rows(
        &self,
        steps: &[GroupStep],
    ) -> Result<Vec<Tensor>, TableError> {
        let Some(caches) = &self.caches else {
            return Err(TableError::BadBatch("no device cache".into()));
        };
        let mut out = Vec::with_capacity(steps.len());
        for (g, step) in steps.iter().enumerate() {
            let t = &self.groups[g];
            let dim = t.weights.size()[1];
            let (mut at_dev, mut slots, mut at_host, mut host_rows) =
                (vec![], vec![], vec![], vec![]);
            for (i, &row) in step.unique.iter().enumerate() {
                match caches[g].slot(row as u64) {
                    Some(s) => {
                        at_dev.push(i as i64);
                        slots.push(s as i64);
                    }
                    None => {
                        at_host.push(i as i64);
                        host_rows.push(row as u64);
                    }
                }
            }
            let mut rows =
                Tensor::f_zeros([step.unique.len() as i64, dim], (Kind::Float, self.device))
                    .map_err(torch)?;
            let _no_grad = tch::no_grad_guard();
            if !slots.is_empty() {
                let cached = t
                    .weights
                    .f_index_select(0, &upload_i64(&slots, self.device))
                    .map_err(torch)?;
                let _ = rows
                    .f_index_copy_(0, &upload_i64(&at_dev, self.device), &cached)
                    .map_err(torch)?;
            }
            if !host_rows.is_empty() {
                let mut values = Vec::with_capacity(host_rows.len() * dim as usize);
                for (table, local, _) in self.table_runs(g, &host_rows) {
                    values.extend(self.host.shards()[table][0].gather(&local)?);
                }
                let read = upload_f32(&values, self.device).view([host_rows.len() as i64, dim]);
                let _ = rows
                    .f_index_copy_(0, &upload_i64(&at_host, self.device), &read)
                    .map_err(torch)?;
            }
            out.push(rows);
        }
        Ok(out)
    }
}
