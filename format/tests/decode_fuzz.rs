//! The decoders never panic and never overflow on bad input: random mutations of a
//! golden image's header and metadata and of its manifest (at least 10,000 cases
//! each), and a few hundred whole mutated image files, are all either decoded or
//! refused with an error. Overflow checks are on for this crate in every profile
//! (root Cargo.toml), so an unchecked size or offset would panic here.

use ckpt_format::image::{Header, Image, HEADER_LEN};
use ckpt_format::manifest::{unseal, MANIFEST};
use std::fs;
use std::path::{Path, PathBuf};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// A few random changes: flipped bits, bytes set to edge values, a cut, a range
    /// copied over another, or a u64 set to a huge value.
    fn mutate(&mut self, data: &[u8]) -> Vec<u8> {
        let mut d = data.to_vec();
        for _ in 0..=self.below(4) {
            if d.is_empty() {
                break;
            }
            let at = self.below(d.len());
            match self.below(6) {
                0 => d[at] ^= 1 << self.below(8),
                1 => d[at] = [0, 0x7f, 0x80, 0xff][self.below(4)],
                2 => d.truncate(at),
                3 => {
                    let from = self.below(d.len());
                    let n = self.below(16).min(d.len() - at).min(d.len() - from);
                    let chunk = d[from..from + n].to_vec();
                    d[at..at + n].copy_from_slice(&chunk);
                }
                4 if at + 8 <= d.len() => {
                    let v = [u64::MAX, u64::MAX - 4095, 1 << 63, 0][self.below(4)];
                    d[at..at + 8].copy_from_slice(&v.to_le_bytes());
                }
                _ => d.insert(at, self.next() as u8),
            }
        }
        d
    }
}

fn golden() -> (PathBuf, PathBuf) {
    let v = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "tests/golden/v{}",
        ckpt_format::image::FORMAT_VERSION
    ));
    let gen = fs::read_dir(&v).unwrap().next().unwrap().unwrap().path();
    let img = fs::read_dir(&gen)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "img"))
        .unwrap();
    (gen, img)
}

const CASES: usize = 10_000;

#[test]
fn header_decoding_never_panics() {
    let (_, img) = golden();
    let bytes = fs::read(&img).unwrap();
    let head = &bytes[..HEADER_LEN as usize];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut refused = 0;
    for _ in 0..CASES {
        let m = rng.mutate(head);
        if Header::decode(&m, &img).is_err() {
            refused += 1;
        }
    }
    assert!(
        refused > CASES / 2,
        "only {refused} of {CASES} mutated headers refused"
    );
}

#[test]
fn metadata_decoding_never_panics() {
    let (_, img) = golden();
    let i = Image::open(&img).unwrap();
    let bytes = fs::read(&img).unwrap();
    let meta = &bytes[i.header.meta_offset as usize..];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..CASES {
        let m = rng.mutate(meta);
        let _ = ckpt_format::image::decode_state(i.header.version, m);
    }
}

#[test]
fn manifest_decoding_never_panics() {
    let (gen, _) = golden();
    let path = gen.join(MANIFEST);
    let bytes = fs::read(&path).unwrap();
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let mut refused = 0;
    for _ in 0..CASES {
        let m = rng.mutate(&bytes);
        if unseal(&m, &path, &gen).is_err() {
            refused += 1;
        }
    }
    // Mutations in the envelope's whitespace may leave it valid; nothing else may.
    assert!(
        refused > CASES * 9 / 10,
        "only {refused} of {CASES} refused"
    );
}

#[test]
fn whole_mutated_images_are_refused_or_decoded() {
    let (_, img) = golden();
    let bytes = fs::read(&img).unwrap();
    let dir = std::env::temp_dir().join(format!("ckpt-fuzz-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("core.img");
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut refused = 0;
    for _ in 0..300 {
        // Mutate the header or the metadata (page data is covered by its checksums).
        let mut m = bytes.clone();
        let meta_at = bytes.len() - 2000.min(bytes.len() - HEADER_LEN as usize);
        let (from, to) = if rng.below(2) == 0 {
            (0, HEADER_LEN as usize)
        } else {
            (meta_at, bytes.len())
        };
        let part = rng.mutate(&m[from..to]);
        m.splice(from..to, part);
        fs::write(&path, &m).unwrap();
        match Image::open(&path) {
            Ok(i) => {
                if i.verify_pages(|_| {}).is_err() {
                    refused += 1;
                }
            }
            Err(_) => refused += 1,
        }
    }
    let _ = fs::remove_dir_all(&dir);
    assert!(
        refused > 250,
        "only {refused} of 300 mutated images refused"
    );
}
