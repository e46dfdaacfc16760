//! A generation is sealed (docs/CONTRACT.md §6): its manifest is checksummed and lists every image
//! by plain file name, with its pid and checksum, and each image carries the id of
//! its generation. A forged or mixed-up layout — a path leading out of the generation,
//! an image of another process or generation, a manifest of another generation, a
//! `latest` that points elsewhere, a manifest edited with or without a recomputed
//! checksum — must be refused with one `ckpt: error:` line naming the file, before
//! any process is created (the restore never reaches its first step), and nothing
//! may run.
mod common;

use common::*;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// A job and its checkpoints: process A in two generations, process B in one.
struct Setup {
    d: TestDir,
    /// A's checkpoint directory (generations 1 and 2) and B's.
    ck_a: PathBuf,
    ck_b: PathBuf,
    gen_a1: PathBuf,
    gen_a2: PathBuf,
    gen_b: PathBuf,
    pid_a: i32,
    pid_b: i32,
    out_a: PathBuf,
    out_b: PathBuf,
}

fn only_generation(ck: &Path, n: usize) -> PathBuf {
    let mut gens: Vec<PathBuf> = fs::read_dir(ck)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ckpt_")
                && p.is_dir()
        })
        .collect();
    gens.sort();
    assert_eq!(gens.len(), n, "generations in {}: {gens:?}", ck.display());
    gens.pop().unwrap()
}

fn setup() -> Setup {
    let d = tempdir();
    let exe = d.join("prog/counter");
    fs::create_dir_all(exe.parent().unwrap()).unwrap();
    copy_program(&testdata("counter"), &exe);
    let (out_a, out_b) = (d.join("out_a"), d.join("out_b"));
    let stop = d.join("stop");
    let (ck_a, ck_b) = (d.join("ck_a"), d.join("ck_b"));
    let mut a = Target::start_path(&exe, &[out_a.as_os_str(), stop.as_os_str(), os("20")]);
    let mut b = Target::start_path(&exe, &[out_b.as_os_str(), stop.as_os_str(), os("20")]);
    a.stdout.expect_line("ready");
    b.stdout.expect_line("ready");
    dump(a.pid, &ck_a, false);
    let gen_a1 = only_generation(&ck_a, 1);
    // A counts on before its second generation: generation 1 is an older state.
    let n = a.stdout.expect_number_at_least(0);
    a.stdout.expect_number_at_least(n + 5);
    a.dump_kill(&ck_a);
    b.dump_kill(&ck_b);
    let gen_a2 = only_generation(&ck_a, 2);
    let gen_b = only_generation(&ck_b, 1);
    Setup {
        ck_a,
        ck_b,
        gen_a1,
        gen_a2,
        gen_b,
        pid_a: a.pid,
        pid_b: b.pid,
        out_a,
        out_b,
        d,
    }
}

fn image_of(gen: &Path, pid: i32) -> PathBuf {
    gen.join(format!("core-{pid}.img"))
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// The manifest of `gen`, its inner part, as a JSON value.
fn manifest(gen: &Path) -> serde_json::Value {
    let sealed = read_json(&gen.join("manifest.json"));
    assert_eq!(sealed["format"], 3, "manifest format: {sealed}");
    sealed["manifest"].clone()
}

/// Write `m` as the manifest of `gen` with a correct checksum, as a forger would.
fn write_sealed(gen: &Path, m: &serde_json::Value) {
    let body = serde_json::to_string_pretty(m).unwrap();
    let sum = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(body.as_bytes()));
    let text = format!("{{\"format\": 3, \"checksum\": \"{sum}\", \"manifest\": {body}}}");
    fs::write(gen.join("manifest.json"), text).unwrap();
}

impl Setup {
    /// A fresh copy of A's checkpoint directory (both generations and `latest`).
    fn copy_a(&self, case: &str) -> (PathBuf, PathBuf, PathBuf) {
        let dst = self.d.join(format!("case-{case}"));
        fs::create_dir_all(&dst).unwrap();
        for g in [&self.gen_a1, &self.gen_a2] {
            copy_dir(g, &dst.join(g.file_name().unwrap()));
        }
        symlink(self.gen_a2.file_name().unwrap(), dst.join("latest")).unwrap();
        let g1 = dst.join(self.gen_a1.file_name().unwrap());
        let g2 = dst.join(self.gen_a2.file_name().unwrap());
        (dst, g1, g2)
    }

    /// `ckpt restore TARGET` must fail with one error line before its first step
    /// (CKPT_TIMING names every step on stderr), and nothing of A or B may run.
    fn assert_refused(&self, target: &Path, case: &str, words: &[&str]) {
        let lines = (file_lines(&self.out_a).len(), file_lines(&self.out_b).len());
        let out = run(ckpt_cmd().env("CKPT_TIMING", "1").args([
            "restore".as_ref(),
            target.as_os_str(),
            "--detach".as_ref(),
        ]));
        let line = assert_error(&out, case);
        for w in words {
            assert!(
                line.contains(w),
                "{case}: the error should name {w:?}: {line}"
            );
        }
        for pid in [self.pid_a, self.pid_b] {
            assert!(
                !pid_exists(pid),
                "{case}: PID {pid} exists after the refused restore"
            );
        }
        let marker = self.d.path().to_string_lossy().to_string();
        let left = pids_running(&marker);
        for &p in &left {
            kill_if_running(p, &marker);
        }
        assert!(left.is_empty(), "{case}: processes left running: {left:?}");
        assert_eq!(
            (file_lines(&self.out_a).len(), file_lines(&self.out_b).len()),
            lines,
            "{case}: something ran and wrote to an output file"
        );
    }
}

#[test]
fn forged_and_mixed_up_generations_are_refused() {
    let s = setup();
    let img_a2 = image_of(&s.gen_a2, s.pid_a);
    let img_b = image_of(&s.gen_b, s.pid_b);
    let a2_name = s.gen_a2.file_name().unwrap().to_string_lossy().to_string();

    // Paths leading out of the generation, with a valid manifest checksum.
    let bad_names = [
        ("absolute", img_b.to_string_lossy().to_string()),
        (
            "dotdot",
            format!(
                "../../ck_b/{}/core-{}.img",
                s.gen_b.file_name().unwrap().to_string_lossy(),
                s.pid_b
            ),
        ),
        ("dotdot-own", format!("../{a2_name}/core-{}.img", s.pid_a)),
        ("subdir", format!("sub/core-{}.img", s.pid_a)),
        ("dot", ".".to_string()),
        ("hidden", format!(".core-{}.img", s.pid_a)),
        ("empty", String::new()),
    ];
    for (case, name) in &bad_names {
        let (dir, _, g2) = s.copy_a(case);
        if *case == "subdir" {
            fs::create_dir(g2.join("sub")).unwrap();
            fs::copy(
                &img_a2,
                g2.join("sub").join(format!("core-{}.img", s.pid_a)),
            )
            .unwrap();
        }
        let mut m = manifest(&g2);
        m["processes"][0]["image"] = serde_json::Value::String(name.clone());
        write_sealed(&g2, &m);
        s.assert_refused(&dir, case, &["manifest.json", "plain file name"]);
    }

    // B's image under A's name: another process (and another generation).
    let (dir, _, g2) = s.copy_a("swap-process");
    fs::copy(&img_b, image_of(&g2, s.pid_a)).unwrap();
    s.assert_refused(&dir, "swap-process", &[&format!("core-{}.img", s.pid_a)]);

    // B's image with the manifest forged to list it under its own pid and checksum.
    let (dir, _, g2) = s.copy_a("swap-forged");
    let img_b_name = format!("core-{}.img", s.pid_b);
    fs::copy(&img_b, g2.join(&img_b_name)).unwrap();
    let mut m = manifest(&g2);
    let mb = manifest(&s.gen_b);
    m["processes"][0] = mb["processes"][0].clone();
    m["root_pid"] = mb["root_pid"].clone();
    write_sealed(&g2, &m);
    s.assert_refused(&dir, "swap-forged", &[&img_b_name, "another generation"]);

    // A's image of generation 1 placed in generation 2.
    let (dir, g1, g2) = s.copy_a("older-image");
    fs::copy(image_of(&g1, s.pid_a), image_of(&g2, s.pid_a)).unwrap();
    s.assert_refused(&dir, "older-image", &["another generation"]);

    // ...and with the manifest forged to carry generation 1's checksum for it.
    let (dir, g1, g2) = s.copy_a("older-image-forged");
    fs::copy(image_of(&g1, s.pid_a), image_of(&g2, s.pid_a)).unwrap();
    let mut m = manifest(&g2);
    m["processes"][0]["image_checksum"] = manifest(&g1)["processes"][0]["image_checksum"].clone();
    write_sealed(&g2, &m);
    s.assert_refused(&dir, "older-image-forged", &["another generation"]);

    // Generation 1's manifest in generation 2.
    let (dir, g1, g2) = s.copy_a("older-manifest");
    fs::copy(g1.join("manifest.json"), g2.join("manifest.json")).unwrap();
    s.assert_refused(&dir, "older-manifest", &["manifest.json", &a2_name]);

    // ...renamed to look like generation 2's.
    let (dir, g1, g2) = s.copy_a("older-manifest-renamed");
    let mut m = manifest(&g1);
    m["name"] = serde_json::Value::String(a2_name.clone());
    write_sealed(&g2, &m);
    s.assert_refused(&dir, "older-manifest-renamed", &["another generation"]);

    // The whole of generation 1 under generation 2's name.
    let (dir, g1, g2) = s.copy_a("older-generation");
    fs::remove_dir_all(&g2).unwrap();
    fs::rename(&g1, &g2).unwrap();
    s.assert_refused(
        &dir,
        "older-generation",
        &["manifest.json", "another's name"],
    );

    // A manifest whose pid was changed (checksum recomputed).
    let (dir, _, g2) = s.copy_a("pid");
    let mut m = manifest(&g2);
    m["processes"][0]["pid"] = (s.pid_a + 1).into();
    m["root_pid"] = (s.pid_a + 1).into();
    write_sealed(&g2, &m);
    s.assert_refused(&dir, "pid", &["manifest"]);

    // A manifest edited without a new checksum.
    let (dir, _, g2) = s.copy_a("unsealed-edit");
    let path = g2.join("manifest.json");
    let text = fs::read_to_string(&path).unwrap();
    let edited = text.replacen(&format!("\"pid\": {}", s.pid_a), "\"pid\": 1", 1);
    assert_ne!(text, edited, "the manifest lists the pid");
    fs::write(&path, edited).unwrap();
    s.assert_refused(&dir, "unsealed-edit", &["manifest.json", "checksum"]);

    // An image checksum changed in the manifest (manifest checksum recomputed).
    let (dir, _, g2) = s.copy_a("image-checksum");
    let mut m = manifest(&g2);
    m["processes"][0]["image_checksum"] = "0123456789abcdef".into();
    write_sealed(&g2, &m);
    s.assert_refused(&dir, "image-checksum", &["checksum"]);

    // The image replaced by a symbolic link to B's.
    let (dir, _, g2) = s.copy_a("symlink");
    fs::remove_file(image_of(&g2, s.pid_a)).unwrap();
    symlink(&img_b, image_of(&g2, s.pid_a)).unwrap();
    s.assert_refused(&dir, "symlink", &["symbolic link"]);

    // The same process listed twice.
    let (dir, _, g2) = s.copy_a("twice");
    let mut m = manifest(&g2);
    let p = m["processes"][0].clone();
    m["processes"].as_array_mut().unwrap().push(p);
    write_sealed(&g2, &m);
    s.assert_refused(&dir, "twice", &["twice"]);

    // `latest` pointing out of the checkpoint directory, read as DIR and as DIR/latest
    // (which is what the restart script names).
    for (case, target) in [
        ("latest-absolute", s.gen_b.clone()),
        (
            "latest-dotdot",
            Path::new("..")
                .join(s.ck_b.file_name().unwrap())
                .join(s.gen_b.file_name().unwrap()),
        ),
    ] {
        let (dir, _, _) = s.copy_a(case);
        fs::remove_file(dir.join("latest")).unwrap();
        symlink(&target, dir.join("latest")).unwrap();
        s.assert_refused(&dir, case, &["latest", "not a generation"]);
        s.assert_refused(&dir.join("latest"), case, &["latest", "not a generation"]);
    }

    // Unsealed (format 1) and future manifests say what they are.
    let (dir, _, g2) = s.copy_a("format1");
    let m = manifest(&g2);
    fs::write(
        g2.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    s.assert_refused(&dir, "format1", &["older ckpt", "format 1"]);
    let (dir, _, g2) = s.copy_a("format4");
    let mut sealed = read_json(&g2.join("manifest.json"));
    sealed["format"] = 4.into();
    fs::write(g2.join("manifest.json"), sealed.to_string()).unwrap();
    s.assert_refused(&dir, "format4", &["newer"]);

    // Random byte changes anywhere in the sealed part of the manifest.
    let text = fs::read(s.gen_a2.join("manifest.json")).unwrap();
    let start = text
        .windows(11)
        .position(|w| w == b"\"manifest\":")
        .expect("manifest part")
        + 11;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ s.pid_a as u64;
    for i in 0..30 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = start + (seed as usize) % (text.len() - start - 1);
        let mut t = text.clone();
        t[at] = match t[at] {
            b'0'..=b'8' => t[at] + 1,
            b'9' => b'0',
            c => c ^ 0x20,
        };
        let case = format!("random-{i}");
        let (dir, _, g2) = s.copy_a(&case);
        fs::write(g2.join("manifest.json"), &t).unwrap();
        s.assert_refused(&dir, &case, &["manifest.json"]);
    }

    // The untouched copies still restore: the refusals were about the changes.
    for (ck, pid, out) in [(&s.ck_a, s.pid_a, &s.out_a), (&s.ck_b, s.pid_b, &s.out_b)] {
        let before = file_lines(out).len();
        let mut r = Restored::start(ck, pid, &s.d.path().to_string_lossy());
        r.assert_same_pid();
        wait_until("the restored counter writes on", || {
            file_lines(out).len() > before
        });
        kill_if_running(pid, &s.d.path().to_string_lossy());
        drop(r);
    }
}
