//! Fused steps deduplicated on the device, the fast path of fused tables with no `mul`
//! feature (through a device cache, the step's distinct rows are first placed in slots,
//! [`FusedEmbeddings::place_step`]): the host only maps ids to fused rows
//! ([`FusedLayout::device_arrays`], a linear pass, no sort), so it keeps up with a GPU at
//! large batches. Forward is one `embedding_bag` per width straight over the group's
//! rows, with bags slot-major. Backward finds the distinct rows with a sort on the device
//! (`unique`, then a stable `argsort` of each term's row), so each distinct row's
//! gradient is a sum in a fixed order (`embedding_bag` over the slots' gradient), the
//! same on every run: no atomics.
//!
//! [`FusedLayout::device_arrays`]: shardrec_tables::FusedLayout::device_arrays

use shardrec_tables::{DeviceArrays, TableError};
use tch::{Device, Kind, Tensor};

use super::{bag_sum, torch, upload_f32, upload_i64, BagTensors, FusedEmbeddings};

/// One step's arrays on the device.
#[derive(Debug)]
pub struct DeviceStep {
    batch: i64,
    /// Per group: the terms' fused rows, the bags' offsets, the terms' weights.
    groups: Vec<BagTensors>,
}

impl DeviceStep {
    pub(super) fn upload(batch: usize, arrays: &[DeviceArrays], device: Device) -> Self {
        let groups = arrays
            .iter()
            .map(|a| BagTensors {
                index: upload_i64(&a.rows, device),
                weight: (!a.weight.is_empty()).then(|| upload_f32(&a.weight, device)),
                offsets: upload_i64(&a.offsets, device),
            })
            .collect();
        Self {
            batch: batch as i64,
            groups,
        }
    }
}

impl FusedEmbeddings {
    /// Through a device cache: places each group's distinct rows of `step` in the cache
    /// (found by a sort on the device, placed on the host, misses and evictions moved in
    /// one batched copy each way), and makes the step read slots instead of rows.
    pub(super) fn place_step(&mut self, step: &mut DeviceStep) -> Result<(), TableError> {
        for g in 0..step.groups.len() {
            if step.groups[g].index.size()[0] == 0 {
                continue;
            }
            let (unique, inverse, _) = step.groups[g]
                .index
                .f_internal_unique2(true, true, false)
                .map_err(torch)?;
            let rows = unique
                .f_to_device(Device::Cpu)
                .and_then(|u| Vec::<i64>::try_from(&u))
                .map_err(torch)?;
            let slots = upload_i64(&self.place_in_cache(g, &rows)?, self.device);
            step.groups[g].index = slots.f_index_select(0, &inverse).map_err(torch)?;
        }
        Ok(())
    }

    /// The output of a step planned for the device.
    pub(super) fn forward_device(&self, step: &DeviceStep) -> Result<Tensor, TableError> {
        let _no_grad = tch::no_grad_guard();
        let mut outs = Vec::with_capacity(self.groups.len());
        for ((t, bags), group) in self
            .groups
            .iter()
            .zip(&step.groups)
            .zip(&self.layout.groups)
        {
            let (slots, dim) = (group.slot_columns.len() as i64, group.dim as i64);
            // bags slot-major: [slots, batch, dim] -> [batch, slots * dim]
            let out = bag_sum(&t.weights, bags)?
                .f_view([slots, step.batch, dim])
                .and_then(|o| o.f_permute([1, 0, 2]))
                .and_then(|o| o.f_reshape([step.batch, slots * dim]))
                .map_err(torch)?;
            outs.push(out);
        }
        self.side_by_side(outs)
    }

    /// Backward of a step planned for the device: per group, the distinct rows found by
    /// a sort, their gradients summed in term order, the optimizer on them.
    pub(super) fn backward_device(
        &mut self,
        step: &DeviceStep,
        grad: &Tensor,
        update: u64,
    ) -> Result<(), TableError> {
        let opt = *self.host.optimizer();
        for (g, bags) in step.groups.iter().enumerate() {
            let terms = bags.index.size()[0];
            if terms == 0 {
                continue;
            }
            let dim = self.layout.groups[g].dim as i64;
            // [batch, slots, dim] -> slot-major rows, as the bags are
            let slots = self
                .group_gradient(g, grad)?
                .f_permute([1, 0, 2])
                .and_then(|s| s.f_reshape([-1, dim]))
                .map_err(torch)?;
            let (unique, inverse, counts) = bags
                .index
                .f_internal_unique2(true, true, true)
                .map_err(torch)?;
            let order = inverse.f_argsort_stable(true, 0, false).map_err(torch)?;
            let zero = Tensor::f_zeros([1], (Kind::Int64, self.device)).map_err(torch)?;
            let by_row = BagTensors {
                index: Tensor::f_repeat_interleave(
                    &bags.offsets.diff(1, 0, None::<Tensor>, None::<Tensor>),
                    terms,
                )
                .and_then(|bag| bag.f_index_select(0, &order))
                .map_err(torch)?,
                weight: match &bags.weight {
                    Some(w) => Some(w.f_index_select(0, &order).map_err(torch)?),
                    None => None,
                },
                offsets: Tensor::f_cat(&[zero, counts.cumsum(0, Kind::Int64)], 0).map_err(torch)?,
            };
            let row_grad = bag_sum(&slots, &by_row)?;
            let rows = self.groups[g]
                .weights
                .f_index_select(0, &unique)
                .map_err(torch)?;
            self.groups[g].apply(&opt, update, &unique, &rows, &row_grad)?;
        }
        Ok(())
    }
}
