//! Terminal size events: a stream of JSON values `{"Width":80,"Height":24}` (client-go encodes
//! them one per line, but a value may span reads and several may share one), keys matched
//! without regard to case, sizes with a zero side ignored (as containerd does).

/// Bytes of an unfinished value kept at most; a client sending more without closing it has its
/// resize stream dropped.
const MAX_PENDING: usize = 4096;

#[derive(Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("resize stream: {0}")]
pub struct ResizeError(String);

impl ResizeDecoder {
    /// Feeds `data`; returns the complete sizes (width, height) in it.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<(u16, u16)>, ResizeError> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut consumed = 0;
        let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<serde_json::Value>();
        loop {
            match values.next() {
                Some(Ok(v)) => {
                    consumed = values.byte_offset();
                    if let Some(size) = size_of(&v) {
                        sizes.push(size);
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(ResizeError(e.to_string())),
                None => {
                    consumed = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..consumed);
        if self.buf.len() > MAX_PENDING {
            return Err(ResizeError(format!("a value of more than {MAX_PENDING} bytes")));
        }
        Ok(sizes)
    }
}

fn size_of(v: &serde_json::Value) -> Option<(u16, u16)> {
    let obj = v.as_object()?;
    let get = |key: &str| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| v.as_u64())
            .and_then(|n| u16::try_from(n).ok())
    };
    let (w, h) = (get("width")?, get("height")?);
    (w > 0 && h > 0).then_some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_and_joined_across_reads() {
        let mut d = ResizeDecoder::default();
        assert_eq!(d.push(br#"{"Width":80,"Hei"#).unwrap(), vec![]);
        assert_eq!(d.push(b"ght\":24}\n{\"width\":100,\"height\":40}\n").unwrap(), vec![(80, 24), (100, 40)]);
        assert_eq!(d.push(br#"{"Width":0,"Height":24}{"Width":1,"Height":2}"#).unwrap(), vec![(1, 2)]);
    }

    #[test]
    fn garbage_and_endless_values_are_errors() {
        assert!(ResizeDecoder::default().push(b"nope").is_err());
        let mut d = ResizeDecoder::default();
        let mut long = b"{\"Width\":".to_vec();
        long.extend(std::iter::repeat_n(b' ', 5000));
        assert!(d.push(&long).is_err());
    }
}
