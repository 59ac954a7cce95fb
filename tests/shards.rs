//! Packed datasets end to end: `sat-host data pack` from ImageFolder and from the ILSVRC
//! layout, `data inspect`, training, evaluation and attacks read from shards (local and
//! over HTTP from a server on 127.0.0.1 that this test runs), bad shards, and Python's
//! `webdataset` reading sat's shards.
use image::{Rgb, RgbImage};
use sat_tests::{image_folder, metrics, pack, sat, target_dir};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Overrides for a tiny run over the shards at `root`.
fn shard_run(root: &str, name: &str) -> Vec<String> {
    [
        "run",
        "--set",
        "device=cpu",
        "--set",
        &format!("name={name}"),
        "--set",
        "data.dataset=shards",
        "--set",
        &format!("data.root={root}"),
        "--set",
        "data.image_size=16",
        "--set",
        "data.workers=2",
        "--set",
        "train.epochs=1",
        "--set",
        "train.batch_size=16",
        "--set",
        "model.width=4",
        "--set",
        "eval.epsilons=[\"4/255\"]",
        "--set",
        "components.pgd.steps=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// An ImageFolder of `per_class` images per class under `cwd/folder`, packed into
/// `cwd/shards` with `shard_size` samples per shard.
fn packed_folder(cwd: &Path, per_class: u32, shard_size: u32) -> PathBuf {
    image_folder(&cwd.join("folder"), per_class);
    let shards = cwd.join("shards");
    let size = shard_size.to_string();
    pack(
        cwd,
        &cwd.join("folder"),
        "image-folder",
        &shards,
        &["--shard-size", &size],
    );
    shards
}

/// Runs `examples/<name>.toml` on the CPU over the shards at `root`, at a small size
/// (32 px, width 4, one epoch, batch 8), with `extra` overrides; asserts success.
fn run_example(cwd: &Path, name: &str, root: &str, extra: &[&str]) -> sat_tests::Run {
    let example = target_dir().join(format!("../../examples/{name}.toml"));
    let root = format!("data.root={root}");
    let mut args = vec!["run", "--config", example.to_str().unwrap()];
    let small = [
        "device=cpu",
        &root,
        "data.image_size=32",
        "model.width=4",
        "train.epochs=1",
        "train.batch_size=8",
    ];
    for set in small.iter().chain(extra) {
        args.extend(["--set", set]);
    }
    sat(cwd, &args, &[]).success()
}

fn run_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn image_folder_packs_trains_with_boxes_and_evaluates_from_shards() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let shards = packed_folder(cwd, 12, 10);
    let out = sat(
        cwd,
        &["data", "inspect", shards.to_str().unwrap(), "--verify"],
        &[],
    )
    .success();
    assert!(
        out.stdout.contains("train: 36 samples in 4 shards"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("test: 36 samples in 4 shards"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("annotations: boxes true, masks true"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("verified"), "{}", out.stdout);
    // Packing again into the same directory is refused; nothing is overwritten.
    let again = sat(
        cwd,
        &[
            "data",
            "pack",
            "folder",
            "--from",
            "image-folder",
            "--out",
            "shards",
        ],
        &[],
    );
    again.fails_with(&["already holds a packed dataset"]);

    let mut args = shard_run("shards", "boxes");
    args.extend(["--plugin", "boxes", "--attack", "sat"].map(String::from));
    let run = sat(cwd, &run_strs(&args), &[]).success();
    assert!(
        run.stderr
            .contains("dataset shards: 36 training and 36 test images"),
        "{}",
        run.stderr
    );
    let m = metrics(&cwd.join("runs/boxes"));
    assert_eq!(m["status"], "completed");
    let share = m["epochs"][0]["data_wait_share"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&share), "{share}");
    assert!(m["robust_accuracy"][0]["samples"].as_u64().unwrap() == 36);

    // eval and attack read the shards like the in-memory sets.
    let eval_dir = cwd.join("eval");
    sat(
        cwd,
        &[
            "eval",
            "--run",
            "runs/boxes",
            "--out",
            eval_dir.to_str().unwrap(),
        ],
        &[],
    )
    .success();
    assert_eq!(metrics(&eval_dir)["clean_accuracy"], m["clean_accuracy"]);
    sat(
        cwd,
        &[
            "attack",
            "--run",
            "runs/boxes",
            "--attack",
            "fgsm",
            "--eps",
            "4/255",
            "--out",
            "adv.safetensors",
        ],
        &[],
    )
    .success();
    assert!(cwd.join("adv.safetensors").metadata().unwrap().len() > 3 * 36 * 16 * 16);

    // bench and saliency read the shards too.
    let bench = sat(
        cwd,
        &[
            "bench",
            "--config",
            "runs/boxes/config.toml",
            "--models",
            "small-cnn",
            "--rows",
            "standard,sat-masks",
            "--batch",
            "8",
            "--warmup",
            "0",
            "--steps",
            "2",
        ],
        &[],
    )
    .success();
    assert!(
        bench.stdout.contains("| small-cnn | sat-masks |"),
        "{}",
        bench.stdout
    );
    sat(
        cwd,
        &[
            "saliency",
            "--config",
            "runs/boxes/config.toml",
            "--out",
            "gallery",
        ],
        &[],
    )
    .success();
    assert!(cwd.join("gallery/boxes.png").exists());
}

/// One `<object>` of a PASCAL VOC file.
fn voc(w: u32, h: u32, name: &str, b: [i64; 4]) -> String {
    format!(
        "<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size><object><name>{name}</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object></annotation>",
        b[0], b[1], b[2], b[3]
    )
}

/// The ILSVRC layout as it ships: `train/<wnid>/<wnid>_N.JPEG` with XML boxes in
/// `annotations/train/<wnid>/`, a flat `val/` labelled by `LOC_val_solution.csv`, and
/// `LOC_synset_mapping.txt`.
fn ilsvrc(root: &Path) {
    let wnids = ["n01440764", "n01443537"];
    let mut solution = String::from("ImageId,PredictionString\n");
    for (c, wnid) in wnids.iter().enumerate() {
        let dir = root.join("train").join(wnid);
        let xml = root.join("annotations/train").join(wnid);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&xml).unwrap();
        for i in 0..10 {
            let (w, h) = (48 + 4 * i, 40);
            let img = RgbImage::from_fn(w, h, |x, y| {
                if (8..24).contains(&x) && (8..30).contains(&y) {
                    Rgb([200, 50 + 150 * c as u8, 20])
                } else {
                    Rgb([(x * 2) as u8, (y * 4) as u8, 90])
                }
            });
            img.save(dir.join(format!("{wnid}_{i}.JPEG"))).unwrap();
            // One box reaches past the image's right edge: clamped.
            std::fs::write(
                xml.join(format!("{wnid}_{i}.xml")),
                voc(w, h, wnid, [8, 8, 24 + 100 * (i % 2) as i64, 30]),
            )
            .unwrap();
        }
        for i in 0..4 {
            let id = format!("ILSVRC2012_val_{:08}", c * 4 + i + 1);
            let img = RgbImage::from_fn(50, 40, |x, y| {
                Rgb([(x * 3) as u8, (y * 2) as u8, 60 + 100 * c as u8])
            });
            std::fs::create_dir_all(root.join("val")).unwrap();
            img.save(root.join("val").join(format!("{id}.JPEG")))
                .unwrap();
            solution += &format!("{id},{wnid} 4 5 30 35 {wnid} 1 1 10 10\n");
        }
    }
    std::fs::write(root.join("LOC_val_solution.csv"), solution).unwrap();
    std::fs::write(
        root.join("LOC_synset_mapping.txt"),
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n",
    )
    .unwrap();
}

#[test]
fn the_ilsvrc_layout_packs_with_its_boxes_and_trains_sat_with_the_imagenet_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    ilsvrc(&cwd.join("ILSVRC"));
    let shards = cwd.join("inet");
    pack(
        cwd,
        &cwd.join("ILSVRC"),
        "imagenet",
        &shards,
        &["--shard-size", "8", "--resize", "32"],
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(shards.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["classes"],
        serde_json::json!(["tench", "goldfish"])
    );
    assert_eq!(manifest["splits"]["train"]["samples"], 20);
    assert_eq!(manifest["splits"]["test"]["samples"], 8);
    assert_eq!(manifest["annotations"]["boxes"], true);
    assert_eq!(manifest["resize"], 32);
    let mut args = shard_run("inet", "inet");
    args.extend(
        [
            "--plugin",
            "boxes",
            "--attack",
            "sat",
            "--set",
            "data.recipe=imagenet",
            "--set",
            "train.batch_size=8",
        ]
        .map(String::from),
    );
    sat(cwd, &run_strs(&args), &[]).success();
    let m = metrics(&cwd.join("runs/inet"));
    assert_eq!(m["status"], "completed");
    assert_eq!(m["class_names"], serde_json::json!(["tench", "goldfish"]));

    // The ImageNet example (ResNet-50, FGSM-RS mixed with SAT on the boxes) runs on the
    // fixture at a small size.
    let out = run_example(
        cwd,
        "imagenet-sat-boxes",
        "inet",
        &["train.amp=false", "eval.max_samples=8", "eval.batch_size=8"],
    );
    assert!(
        out.stderr.contains("inputs from attack `pgd`"),
        "{}",
        out.stderr
    );
    assert_eq!(
        metrics(&cwd.join("runs/imagenet-sat-boxes"))["status"],
        "completed"
    );

    // A box with xmin > xmax is an error naming its XML file.
    let bad = cwd.join("ILSVRC/annotations/train/n01440764/n01440764_3.xml");
    std::fs::write(&bad, voc(60, 40, "n01440764", [30, 8, 10, 30])).unwrap();
    sat(
        cwd,
        &[
            "data", "pack", "ILSVRC", "--from", "imagenet", "--out", "inet2",
        ],
        &[],
    )
    .fails_with(&["n01440764_3.xml", "object 1", "is empty"]);
    assert!(!cwd.join("inet2/manifest.json").exists());
}

#[test]
fn bad_samples_name_the_shard_and_key_or_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let shards = packed_folder(cwd, 6, 6);
    // Corrupt one PNG inside the first training shard, keeping the tar intact: flip
    // bytes in the middle of its IDAT data.
    let tar = shards.join("train/000000.tar");
    let mut bytes = std::fs::read(&tar).unwrap();
    let at = bytes.windows(4).position(|w| w == b"IDAT").unwrap() + 8;
    for b in &mut bytes[at..at + 24] {
        *b ^= 0x5A;
    }
    std::fs::write(&tar, &bytes).unwrap();
    let args = shard_run("shards", "bad");
    let err = sat(cwd, &run_strs(&args), &[]).fails_with(&["000000.tar", "key `00000000_c0_img0`"]);
    assert!(err.contains("decode"), "{err}");
    let mut skip = shard_run("shards", "skip");
    skip.extend(["--set", "data.on_corrupt=skip"].map(String::from));
    let run = sat(cwd, &run_strs(&skip), &[]).success();
    assert!(
        run.stderr.contains("skipped a corrupt sample"),
        "{}",
        run.stderr
    );
    let m = metrics(&cwd.join("runs/skip"));
    assert_eq!(m["epochs"][0]["skipped_samples"], 1);

    // A sample without its .cls: rewrite the member's name in place (same length) and
    // fix the header checksum as tar does.
    let tar = shards.join("train/000001.tar");
    let mut bytes = std::fs::read(&tar).unwrap();
    let name = b"00000006_c1_img0.cls";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap();
    bytes[at + name.len() - 3..at + name.len()].copy_from_slice(b"txt");
    bytes[at + 148..at + 156].fill(b' ');
    let sum: u64 = bytes[at..at + 512].iter().map(|&b| b as u64).sum();
    bytes[at + 148..at + 155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    std::fs::write(&tar, &bytes).unwrap();
    let args = shard_run("shards", "nocls");
    sat(cwd, &run_strs(&args), &[]).fails_with(&[
        "000001.tar",
        "00000006_c1_img0",
        ".cls` is missing",
    ]);

    // A manifest that does not match its shards.
    let manifest = std::fs::read_to_string(shards.join("manifest.json")).unwrap();
    std::fs::write(
        shards.join("manifest.json"),
        manifest.replacen("\"samples\": 6", "\"samples\": 7", 1),
    )
    .unwrap();
    let args = shard_run("shards", "mismatch");
    sat(cwd, &run_strs(&args), &[]).fails_with(&["manifest.json"]);
}

/// A static file server on 127.0.0.1 with `Range` support; `cut` makes it close tar
/// responses half-way. Stops when the returned flag is set (and the test ends).
fn serve(root: PathBuf, cut: bool) -> (String, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        while !stopped.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let root = root.clone();
            std::thread::spawn(move || answer(stream, &root, cut));
        }
    });
    (format!("http://127.0.0.1:{port}/data"), stop)
}

fn answer(mut stream: std::net::TcpStream, root: &Path, cut: bool) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    reader.read_line(&mut request).unwrap();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        if let Some(r) = line.strip_prefix("Range: bytes=") {
            let (a, b) = r.trim().split_once('-').unwrap();
            range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
        }
    }
    let path = request
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_start_matches("/data/");
    let Ok(mut file) = std::fs::File::open(root.join(path)) else {
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let mut body = Vec::new();
    file.read_to_end(&mut body).unwrap();
    let (status, body) = match range {
        Some((a, b)) => (
            "206 Partial Content",
            body[a..=b.min(body.len() - 1)].to_vec(),
        ),
        None => ("200 OK", body),
    };
    let sent = if cut && path.ends_with(".tar") {
        body.len() / 2
    } else {
        body.len()
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(&body[..sent]);
}

#[test]
fn shards_stream_over_http_and_a_cut_connection_names_the_shard_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let shards = packed_folder(cwd, 6, 5);
    let (url, stop) = serve(shards.clone(), false);
    let out = sat(cwd, &["data", "inspect", &url, "--verify"], &[]).success();
    assert!(
        out.stdout.contains("train: 18 samples in 4 shards"),
        "{}",
        out.stdout
    );
    let args = shard_run(&url, "http");
    sat(cwd, &run_strs(&args), &[]).success();
    let local = shard_run("shards", "local");
    sat(cwd, &run_strs(&local), &[]).success();
    let (a, b) = (
        metrics(&cwd.join("runs/http")),
        metrics(&cwd.join("runs/local")),
    );
    assert_eq!(a["epochs"][0]["train_loss"], b["epochs"][0]["train_loss"]);
    assert_eq!(a["clean_accuracy"], b["clean_accuracy"]);
    stop.store(true, Ordering::SeqCst);

    let (cut, stop) = serve(shards, true);
    let args = shard_run(&cut, "cut");
    sat(cwd, &run_strs(&args), &[]).fails_with(&["000000.tar", "key `", "connection closed after"]);
    stop.store(true, Ordering::SeqCst);
}

#[test]
fn pythons_webdataset_reads_sats_shards() {
    let root = target_dir().join("../..");
    let python = root.join(".venv/bin/python");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let shards = packed_folder(cwd, 4, 5);
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/pytorch/read_shards.py"))
        .arg(&shards)
        .arg("train")
        .output()
        .expect("the project's .venv python runs (scripts/setup-libtorch makes it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let samples = read["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 12);
    // Keys, labels, pixels, boxes and masks as packed: the first training image is
    // class c0's img0.png, stored as it was.
    assert_eq!(samples[0]["key"], "00000000_c0_img0");
    assert_eq!(samples[0]["cls"], 0);
    assert_eq!(samples[11]["cls"], 2);
    let png = image::open(cwd.join("folder/train/c0/img0.png"))
        .unwrap()
        .to_rgb8();
    let sum: u64 = png.as_raw().iter().map(|&v| v as u64).sum();
    assert_eq!(samples[0]["sum"], sum);
    assert_eq!(
        samples[0]["shape"],
        serde_json::json!([png.height(), png.width(), 3])
    );
    assert_eq!(
        samples[0]["boxes"],
        serde_json::json!([[0.0, 0.0, 8.0, 8.0]])
    );
    assert_eq!(samples[0]["mask_sum"], 64 * 255);
}

/// Tiny ImageNet as it ships (2 classes, 64 px JPEGs, boxes in `*_boxes.txt`).
fn tiny_imagenet(root: &Path) {
    let wnids = ["n01443537", "n01629819"];
    std::fs::create_dir_all(root.join("val/images")).unwrap();
    std::fs::write(root.join("wnids.txt"), wnids.join("\n")).unwrap();
    let mut val = String::new();
    for (c, wnid) in wnids.iter().enumerate() {
        let dir = root.join("train").join(wnid);
        std::fs::create_dir_all(dir.join("images")).unwrap();
        let mut boxes = String::new();
        for i in 0..8 {
            let name = format!("{wnid}_{i}.JPEG");
            RgbImage::from_fn(64, 64, |x, y| {
                Rgb([(x * 4) as u8, (y * 4) as u8, 100 * c as u8])
            })
            .save_with_format(dir.join("images").join(&name), image::ImageFormat::Jpeg)
            .unwrap();
            boxes += &format!("{name}\t{}\t8\t40\t50\n", i);
        }
        std::fs::write(dir.join(format!("{wnid}_boxes.txt")), boxes).unwrap();
        for i in 0..3 {
            let name = format!("val_{}.JPEG", c * 3 + i);
            RgbImage::from_pixel(64, 64, Rgb([20, 40, 100 * c as u8]))
                .save_with_format(
                    root.join("val/images").join(&name),
                    image::ImageFormat::Jpeg,
                )
                .unwrap();
            val += &format!("{name}\t{wnid}\t0\t0\t63\t63\n");
        }
    }
    std::fs::write(root.join("val/val_annotations.txt"), val).unwrap();
}

#[test]
fn tiny_imagenet_and_cifar_pack_and_the_tiny_imagenet_example_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    tiny_imagenet(&cwd.join("tiny"));
    pack(
        cwd,
        &cwd.join("tiny"),
        "tiny-imagenet",
        &cwd.join("tiny-shards"),
        &[],
    );
    run_example(
        cwd,
        "tiny-imagenet-shards",
        "tiny-shards",
        &["eval.max_samples=6"],
    );
    let m = metrics(&cwd.join("runs/tiny-imagenet-shards"));
    assert_eq!(m["status"], "completed");

    // CIFAR-10's binary batches: raw pixels stored as PNG, labels kept.
    let cifar = cwd.join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    for (file, count) in [
        ("data_batch_1.bin", 7),
        ("data_batch_2.bin", 1),
        ("data_batch_3.bin", 1),
        ("data_batch_4.bin", 1),
        ("data_batch_5.bin", 1),
        ("test_batch.bin", 3),
    ] {
        let mut bytes = Vec::new();
        for i in 0..count {
            bytes.push((i % 10) as u8);
            bytes.extend((0..3072).map(|p| ((p * 7 + i * 13) % 256) as u8));
        }
        std::fs::write(cifar.join(file), bytes).unwrap();
    }
    pack(
        cwd,
        &cifar,
        "cifar10",
        &cwd.join("cifar-shards"),
        &["--shard-size", "4"],
    );
    let out = sat(cwd, &["data", "inspect", "cifar-shards", "--json"], &[]).success();
    let manifest: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(manifest["splits"]["train"]["samples"], 11);
    assert_eq!(
        manifest["splits"]["train"]["shards"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(manifest["classes"].as_array().unwrap().len(), 10);
    let tar = std::fs::read(cwd.join("cifar-shards/train/000000.tar")).unwrap();
    assert!(
        tar.windows(20).any(|w| w == b"00000001_train.cls\0\0"),
        "keys and .cls members"
    );
}
