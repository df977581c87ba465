//! Each sparse optimizer against a dense reference computed with libtorch on the same
//! rows: the table's gradient is built densely (index_add over the batch's ids, duplicates
//! summing), the update formula is applied to the touched rows with tensor ops, and the
//! result must match the Rust sparse update within 1e-6; untouched rows must not move.

use shardrec_tables::{
    CollectionLayout, CollectionSpec, KeyedJaggedIds, LocalEmbeddings, OptimizerKind, RowInit,
    SparseOptimizer,
};
use tch::{Kind, Tensor};

const ROWS: u64 = 12;
const DIM: usize = 4;

fn table_values(e: &LocalEmbeddings) -> Tensor {
    Tensor::from_slice(&e.shards()[0][0].weights().unwrap()).view([ROWS as i64, DIM as i64])
}

fn check(kind: OptimizerKind) {
    let layout = CollectionLayout::new(CollectionSpec::plain(
        &["f".into()],
        &[ROWS],
        DIM,
        RowInit::Uniform {
            bound: 0.5,
            seed: 11,
        },
    ))
    .unwrap();
    let mut opt = SparseOptimizer::new(kind, 0.05);
    opt.weight_decay = 0.01;
    let mut emb = LocalEmbeddings::single_process(layout, opt).unwrap();
    let w0 = table_values(&emb);
    // reference state
    let mut w = w0.copy();
    let mut s1 = Tensor::zeros([ROWS as i64, DIM as i64], (Kind::Float, tch::Device::Cpu));
    let mut s2 = s1.copy();
    let mut row_acc = Tensor::zeros([ROWS as i64], (Kind::Float, tch::Device::Cpu));
    let batches: [&[u64]; 3] = [&[3, 5, 3, 9, 3], &[5, 0, 11, 11], &[7, 3]];
    for (step, ids) in batches.iter().enumerate() {
        let t = (step + 1) as i32;
        let batch = KeyedJaggedIds::from_single_valued(1, ids.len(), ids).unwrap();
        let plan = emb.plan(&batch).unwrap();
        let mut out = vec![0f32; ids.len() * DIM];
        let gathered = emb.forward(&plan, &mut out).unwrap();
        let out_grad: Vec<f32> = (0..out.len())
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1)
            .collect();
        emb.backward(&plan, &gathered, &out_grad).unwrap();

        // dense reference
        let idx = Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let g_out = Tensor::from_slice(&out_grad).view([ids.len() as i64, DIM as i64]);
        let g = Tensor::zeros([ROWS as i64, DIM as i64], (Kind::Float, tch::Device::Cpu))
            .index_add(0, &idx, &g_out);
        let touched = Tensor::zeros([ROWS as i64], (Kind::Float, tch::Device::Cpu))
            .index_fill(0, &idx, 1.0)
            .unsqueeze(1);
        let g = (&g + &w * 0.01) * &touched; // weight decay on touched rows only
        match kind {
            OptimizerKind::Sgd => w = &w - &g * 0.05,
            OptimizerKind::Adagrad => {
                s1 = &s1 + &g * &g;
                w = &w - &g * 0.05 / (s1.sqrt() + 1e-10);
            }
            OptimizerKind::RowwiseAdagrad => {
                row_acc = &row_acc + (&g * &g).mean_dim(1i64, false, Kind::Float);
                w = &w - &g * 0.05 / (row_acc.sqrt().unsqueeze(1) + 1e-10);
            }
            OptimizerKind::Adam => {
                let (b1, b2) = (0.9f64, 0.999f64);
                s1 = (&s1 * b1 + &g * (1.0 - b1)) * &touched + &s1 * (1 - &touched);
                s2 = (&s2 * b2 + &g * &g * (1.0 - b2)) * &touched + &s2 * (1 - &touched);
                let mhat = &s1 / (1.0 - b1.powi(t));
                let vhat = &s2 / (1.0 - b2.powi(t));
                w = &w - (mhat / (vhat.sqrt() + 1e-8) * 0.05) * &touched;
            }
        }
        let got = table_values(&emb);
        let diff = (&got - &w).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{kind:?} step {t}: max difference {diff}");
    }
    // rows never touched keep their initial values exactly
    let got = table_values(&emb);
    for r in [1i64, 2, 4, 6, 8, 10] {
        assert_eq!(
            Vec::<f32>::try_from(got.get(r)).unwrap(),
            Vec::<f32>::try_from(w0.get(r)).unwrap(),
            "row {r} moved"
        );
    }
}

#[test]
fn sgd_matches_dense_reference() {
    check(OptimizerKind::Sgd);
}

#[test]
fn adagrad_matches_dense_reference() {
    check(OptimizerKind::Adagrad);
}

#[test]
fn rowwise_adagrad_matches_dense_reference() {
    check(OptimizerKind::RowwiseAdagrad);
}

#[test]
fn lazy_adam_matches_dense_reference() {
    check(OptimizerKind::Adam);
}
