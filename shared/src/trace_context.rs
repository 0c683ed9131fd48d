//! Trace context as it travels in headers: W3C `traceparent` and AWS X-Ray's
//! `X-Amzn-Trace-Id`, parsed and written. Pure text handling without
//! OpenTelemetry types, so the HTTP edge can put a caller's trace id in its
//! logs even when no spans are exported (`telemetry` turns it into a parent).

use std::fmt;

/// A span's place in a trace: what a `traceparent` header carries. Both ids
/// are non-zero, as the W3C specification requires of a valid one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// Reads a W3C `traceparent` value, `00-<trace id>-<span id>-<flags>` in
    /// lowercase hex. A later version is read by the same four fields and may
    /// carry more after a `-`, as the specification asks; version `ff`,
    /// uppercase hex and all-zero ids are refused.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let (head, rest) = (value.get(..55)?, value.get(55..)?);
        let mut fields = head.split('-');
        let (version, trace_id, span_id, flags) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let version = hex(version, 2, false)?;
        // Version 00 ends after the flags; a later one may go on after a dash.
        let valid_rest = rest.is_empty() || (version != 0 && rest.starts_with('-'));
        if version == 0xff || !valid_rest {
            return None;
        }
        let flags = hex(flags, 2, false)?;
        Self::new(
            hex(trace_id, 32, false)?,
            hex(span_id, 16, false)?,
            flags & 1 == 1,
        )
    }

    /// Reads an X-Ray trace header, e.g.
    /// `Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1`
    /// (fields in any order, others such as `Lineage` or `Self` ignored). The
    /// root's two hex parts are the W3C trace id, `Parent` the span id;
    /// sampled only with `Sampled=1`. `None` without a root or a parent: a
    /// span needs both to be a child.
    pub fn from_xray(value: &str) -> Option<Self> {
        let (mut root, mut parent, mut sampled) = (None, None, false);
        for field in value.split(';') {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            match key.trim() {
                "Root" => {
                    let mut parts = value.trim().split('-');
                    let (version, time, unique) = (parts.next()?, parts.next()?, parts.next()?);
                    if version != "1" || parts.next().is_some() {
                        return None;
                    }
                    root = Some((hex(time, 8, true)? << 96) | hex(unique, 24, true)?);
                }
                "Parent" => parent = Some(hex(value.trim(), 16, true)?),
                "Sampled" => sampled = value.trim() == "1",
                _ => {}
            }
        }
        Self::new(root?, parent?, sampled)
    }

    fn new(trace_id: u128, span_id: u128, sampled: bool) -> Option<Self> {
        let span_id = u64::try_from(span_id).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            sampled,
        })
    }

    /// The trace id as logs and trace viewers show it: 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// The `traceparent` header value (version `00`).
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

/// `text` as a number if it is exactly `digits` hex digits (lowercase only
/// unless `any_case`).
fn hex(text: &str, digits: usize, any_case: bool) -> Option<u128> {
    let valid = text.len() == digits
        && text.bytes().all(|b| {
            b.is_ascii_digit() || matches!(b, b'a'..=b'f') || any_case && matches!(b, b'A'..=b'F')
        });
    if valid {
        u128::from_str_radix(text, 16).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;

    #[test]
    fn a_w3c_traceparent_reads_and_writes_back_the_same() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(value).unwrap();
        assert_eq!(
            parent,
            TraceParent {
                trace_id: TRACE,
                span_id: 0x00f0_67aa_0ba9_02b7,
                sampled: true
            }
        );
        assert_eq!(parent.to_string(), value);
        assert_eq!(parent.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let unsampled =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!unsampled.unwrap().sampled);
    }

    #[test]
    fn a_later_traceparent_version_is_read_by_its_first_four_fields() {
        let value = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes-next";
        assert_eq!(TraceParent::parse(value).unwrap().trace_id, TRACE);
        let glued = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09x";
        assert_eq!(TraceParent::parse(glued), None);
    }

    #[test]
    fn a_malformed_traceparent_is_refused() {
        for value in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473+-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ] {
            assert_eq!(TraceParent::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn an_xray_header_maps_to_the_w3c_trace_and_span_ids() {
        let value = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let parent = TraceParent::from_xray(value).unwrap();
        assert_eq!(parent.trace_id_hex(), "5759e988bd862e3fe1be46a994272793");
        assert_eq!(parent.span_id, 0x5399_5c3f_42cd_8ad8);
        assert!(parent.sampled);
        assert_eq!(
            parent.to_string(),
            "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01"
        );
        // Lambda's own order, with a lineage, unsampled.
        let lambda = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0;Lineage=a87bd80c:0";
        assert!(!TraceParent::from_xray(lambda).unwrap().sampled);
        let reordered =
            "Sampled=1; Parent=53995c3f42cd8ad8; Root=1-5759e988-bd862e3fe1be46a994272793";
        assert_eq!(TraceParent::from_xray(reordered), Some(parent));
    }

    #[test]
    fn an_xray_header_without_root_or_parent_is_no_parent() {
        for value in [
            "",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
            "Self=1-5759e988-bd862e3fe1be46a994272793;Root=1-5759e988-bd862e3fe1be46a994272793",
            "Parent=53995c3f42cd8ad8;Sampled=1",
            "Root=2-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "Root=1-5759e988-bd862e3fe1be46a99427279;Parent=53995c3f42cd8ad8",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=0000000000000000",
        ] {
            assert_eq!(TraceParent::from_xray(value), None, "{value:?}");
        }
    }
}
