//! Saved models: a shared plain table stacks its features' vocabularies; a corrupt or
//! truncated model file is refused with its name.

use crate::common::*;

#[test]
fn corrupt_or_truncated_model_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 2000, 100);
    let cfg = criteo_config(dir.path(), &data, "dlrm", "");
    train_summary(dir.path(), &cfg, &[]);
    let model = dir.path().join("run/model");
    let eval = || {
        run(
            dir.path(),
            &[
                "eval",
                cfg.to_str().unwrap(),
                "--model",
                model.to_str().unwrap(),
            ],
        )
    };
    summary(&eval());

    let table = model.join("tables/main_4.f32");
    let original = std::fs::read(&table).unwrap();
    let mut flipped = original.clone();
    flipped[17] ^= 0x20;
    std::fs::write(&table, &flipped).unwrap();
    let o = eval();
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("main_4.f32") && err.contains("checksum"),
        "{err}"
    );

    std::fs::write(&table, &original[..original.len() - 8]).unwrap();
    let o = eval();
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("main_4.f32") && err.contains("bytes"),
        "{err}"
    );

    std::fs::write(&table, &original).unwrap();
    // an edit that leaves valid JSON is caught by the manifest's own checksum
    let manifest = std::fs::read_to_string(model.join("manifest.json")).unwrap();
    std::fs::write(model.join("manifest.json"), format!("{manifest}\n ")).unwrap();
    let o = eval();
    assert!(!o.status.success(), "an edited manifest was accepted");
    assert!(
        stderr(&o).contains("manifest.json") && stderr(&o).contains("model.crc32"),
        "{}",
        stderr(&o)
    );
    std::fs::write(model.join("manifest.json"), "{not json").unwrap();
    let o = eval();
    assert!(!o.status.success() && stderr(&o).contains("manifest.json"));
}

#[test]
fn shared_plain_table_serves_several_features() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 6000, 100);
    let extra = "[[embedding.tables]]\nname = \"c1_c2\"\nfeatures = [\"C1\", \"C2\"]\n";
    let cfg = criteo_config(dir.path(), &data, "dlrm", &format!("epochs = 3\n{extra}"));
    let s = train_summary(dir.path(), &cfg, &[]);
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("run/model/manifest.json")).unwrap(),
    )
    .unwrap();
    let tables = manifest["collections"][0]["spec"]["tables"]
        .as_array()
        .unwrap();
    assert_eq!(tables.len(), 25, "C1 and C2 share one table");
    let shared = &tables[0];
    assert_eq!(shared["name"], "c1_c2");
    let sizes = manifest["vocab_sizes"].as_array().unwrap();
    assert_eq!(
        shared["rows"].as_u64().unwrap(),
        sizes[0].as_u64().unwrap() + sizes[1].as_u64().unwrap()
    );
    assert!(s["auc"].as_f64().unwrap() > 0.5);
}
