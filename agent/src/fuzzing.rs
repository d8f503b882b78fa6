//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz): each takes arbitrary bytes and
//! must neither panic nor hang, whatever they are. The unit test below runs them over seeds and
//! pseudo-random inputs, a smoke run that needs no fuzzer.

use std::path::Path;

use prost::Message;

/// An image reference: parsed, and when valid, printed and parsed back to itself.
pub fn reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(r) = crate::image::reference::Reference::parse(text) {
        let again = crate::image::reference::Reference::parse(&r.to_string()).expect("a printed reference parses");
        assert_eq!(again.to_string(), r.to_string());
    }
}

/// Manifests and indexes of every media type, and image configs.
pub fn manifest(data: &[u8]) {
    for media_type in [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "",
    ] {
        let _ = crate::image::manifest::Document::parse(media_type, data);
    }
    let _ = crate::image::manifest::ImageConfig::parse(data);
}

/// A layer (an uncompressed tar stream) unpacked into a fresh directory: nothing may appear
/// beside that directory.
pub fn layer(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let dest = dir.path().join("fs");
    if std::fs::create_dir(&dest).is_err() {
        return;
    }
    let _ = crate::image::unpack::unpack(data, &dest);
    let beside: Vec<_> =
        std::fs::read_dir(dir.path()).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert_eq!(beside, vec![std::ffi::OsString::from("fs")], "a layer wrote outside its directory");
}

/// A CNI network config as corrald reads it (a list or a single config).
pub fn cni_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for name in ["10-net.conflist", "10-net.conf"] {
        let _ = crate::cni::config::NetworkList::parse(Path::new(name), text);
    }
}

/// A ContainerConfig (protobuf) through the CRI translation and the spec resolution.
pub fn container_request(data: &[u8]) {
    let Ok(config) = cri_api::v1::ContainerConfig::decode(data) else { return };
    if let Ok(req) = crate::server::create_container_request("pod".into(), config) {
        let _ = crate::runtime::resolve_detached(&req);
    }
}

/// HTTP/2 frames from a client (after the preface) through the `:authority` rewriter: the first
/// byte picks how the socket splits them, and the split must not change what h2 reads.
pub fn authority(data: &[u8]) {
    let Some((&step, frames)) = data.split_first() else { return };
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend_from_slice(frames);
    let whole = crate::server::rewrite_stream(&wire, wire.len());
    assert_eq!(crate::server::rewrite_stream(&wire, usize::from(step)), whole, "split in {step}-byte pieces");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic pseudo-random bytes.
    fn bytes(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed >> 12;
                *seed ^= *seed << 25;
                *seed ^= *seed >> 27;
                (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            let _ = b.append_data(&mut h, name, *data);
        }
        b.into_inner().unwrap_or_default()
    }

    #[test]
    fn entry_points_take_anything() {
        let config = cri_api::v1::ContainerConfig {
            metadata: Some(cri_api::v1::ContainerMetadata { name: "c".into(), attempt: 0 }),
            image: Some(cri_api::v1::ImageSpec { image: "busybox".into(), ..Default::default() }),
            ..Default::default()
        };
        let seeds: Vec<Vec<u8>> = vec![
            b"docker.io/library/busybox:latest".to_vec(),
            b"registry:5000/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".to_vec(),
            br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:00","size":1},"layers":[]}"#.to_vec(),
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}"#.to_vec(),
            tar_of(&[("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"), ("a/.wh..wh..opq", b"")]),
            config.encode_to_vec(),
            // step 5, then HEADERS (END_HEADERS) on stream 1: :method POST, :authority "a%2Fb".
            vec![5, 0, 0, 8, 1, 4, 0, 0, 0, 1, 0x83, 0x41, 5, b'a', b'%', b'2', b'F', b'b'],
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        let mut inputs = seeds.clone();
        for n in 0..400 {
            inputs.push(bytes(&mut seed, n % 97));
        }
        // Seeds with a few bytes changed: most random bytes never get past the first check.
        for s in &seeds {
            for _ in 0..40 {
                let mut m = s.clone();
                if !m.is_empty() {
                    let r = bytes(&mut seed, 2);
                    let at = r[0] as usize % m.len();
                    m[at] = r[1];
                }
                inputs.push(m);
            }
        }
        for data in &inputs {
            reference(data);
            manifest(data);
            cni_config(data);
            container_request(data);
            authority(data);
        }
        for data in inputs.iter().take(60) {
            layer(data);
        }
    }
}
