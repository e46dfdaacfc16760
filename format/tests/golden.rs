//! Golden images: checkpoints written by earlier builds, checked in under
//! `tests/golden/v<N>/` (a checkpoint of testdata/counter, made with a clean
//! environment). Every golden generation of a format this ckpt reads must still
//! decode, pass its checks, and re-encode to exactly its bytes: a saved type changed
//! without a new format version fails here. The current format must have a golden
//! generation, so a version bump comes with a new golden (docs/FORMAT.md).

use ckpt_format::image::{Image, FORMAT_VERSION, OLDEST_READ};
use ckpt_format::manifest::{open_images, unseal, MANIFEST, MANIFEST_FORMAT};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Every golden generation directory, with the format version it was filed under.
fn goldens() -> Vec<(u32, PathBuf)> {
    let mut v = Vec::new();
    for e in fs::read_dir(golden_root()).expect("tests/golden") {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        let version: u32 = name
            .strip_prefix('v')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("tests/golden/{name}: not v<N>"));
        for g in fs::read_dir(e.path()).unwrap() {
            v.push((version, g.unwrap().path()));
        }
    }
    v.sort();
    v
}

#[test]
fn the_current_format_has_a_golden_generation() {
    assert!(
        goldens().iter().any(|(v, _)| *v == FORMAT_VERSION),
        "no golden generation under tests/golden/v{FORMAT_VERSION}: a new image format needs one (see docs/FORMAT.md)"
    );
    assert_eq!(
        MANIFEST_FORMAT, FORMAT_VERSION,
        "the manifest and image formats move together"
    );
}

#[test]
fn golden_generations_decode_and_reencode_exactly() {
    for (version, gen) in goldens() {
        let g = gen.display();
        let mpath = gen.join(MANIFEST);
        let bytes = fs::read(&mpath).unwrap();
        if version < OLDEST_READ {
            // An older format: the compatibility rule says it is refused, saying so.
            let err = unseal(&bytes, &mpath, &gen).expect_err("an old manifest format");
            assert!(
                format!("{err:#}").contains("older ckpt"),
                "{g}: an old format must be refused as such: {err:#}"
            );
            continue;
        }
        let m = unseal(&bytes, &mpath, &gen).unwrap_or_else(|e| panic!("{g}: {e:#}"));
        assert!(!m.processes.is_empty(), "{g}: no process");
        let images = open_images(&gen, &m).unwrap_or_else(|e| panic!("{g}: {e:#}"));
        for img in &images {
            img.verify_pages(|_| {})
                .unwrap_or_else(|e| panic!("{}: {e:#}", img.path.display()));
            let mut meta = vec![0u8; img.header.meta_len as usize];
            img.file
                .read_exact_at(&mut meta, img.header.meta_offset)
                .unwrap();
            let again = postcard::to_allocvec(&img.state).unwrap();
            if version == 2 {
                // Read as format 3 with no attribute groups: exactly its bytes, plus the
                // empty list.
                assert!(img.state.attrs.is_empty());
                meta.push(0);
            }
            assert!(
                again == meta,
                "{}: the saved types no longer encode as format {FORMAT_VERSION} did: bump FORMAT_VERSION and add a golden generation (docs/FORMAT.md)",
                img.path.display()
            );
            assert!(img.state.vmas.iter().any(|v| !v.pages.is_empty()));
            assert!(!img.state.threads.is_empty());
        }
        // The manifest re-seals to the same checksum.
        let resealed = ckpt_format::manifest::seal(&m).unwrap();
        let again = unseal(&resealed, &mpath, &gen).unwrap();
        assert_eq!(
            serde_json::to_string(&again).unwrap(),
            serde_json::to_string(&m).unwrap(),
            "{g}: the manifest changed shape: bump MANIFEST_FORMAT"
        );
    }
}

#[test]
fn a_future_image_version_is_refused_as_such() {
    let (_, gen) = goldens().pop().unwrap();
    let m = unseal(
        &fs::read(gen.join(MANIFEST)).unwrap(),
        &gen.join(MANIFEST),
        &gen,
    )
    .unwrap();
    let src = gen.join(&m.processes[0].image);
    let dir = std::env::temp_dir().join(format!("ckpt-golden-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("core.img");
    fs::copy(&src, &copy).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&copy).unwrap();
    f.write_all_at(&(FORMAT_VERSION + 1).to_le_bytes(), 8)
        .unwrap();
    let err = Image::open(&copy).err().expect("a future version");
    let _ = fs::remove_dir_all(&dir);
    assert!(
        format!("{err:#}").contains("newer than this ckpt supports"),
        "{err:#}"
    );
}
