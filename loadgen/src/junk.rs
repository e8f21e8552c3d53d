//! The junk classes of `--junk`: every kind of bad input a public NTP server
//! must drop without answering (and without slowing down), one byte pattern
//! per class, defined here and nowhere else. They mirror the bad inputs of
//! the server's wire tests (`tests/wire.rs`, `bad_inputs()`): short and
//! empty datagrams, lengths no NTP packet has, malformed extension fields,
//! oversize datagrams, and well-formed headers of the modes and versions a
//! server never answers. Pure: names in, bytes out.

use fastntp::proto::HEADER_LEN;

/// The request every class starts from: LI 0, version 4, mode 3 (client),
/// poll 6, a fixed transmit timestamp. On its own a server would answer it.
pub fn base_request() -> [u8; HEADER_LEN] {
    let mut r = [0u8; HEADER_LEN];
    r[0] = 4 << 3 | 3;
    r[2] = 6;
    r[40..48].copy_from_slice(&42u64.to_be_bytes());
    r
}

/// One kind of bad datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JunkClass {
    /// A datagram of 0 bytes.
    Empty,
    /// The first 47 bytes of a request.
    Short,
    /// A request and 2 zero bytes (50 bytes: no NTP length).
    BadLength,
    /// A request and 952 zero bytes (1000 bytes: an extension field of
    /// type and length 0).
    ZeroTrailer,
    /// A request and an extension field claiming 64 bytes in the 32 sent.
    OverlongExtension,
    /// A request and an extension field of length 8 (below the minimum 16).
    ShortExtension,
    /// A request and an extension field of length 30 (not a multiple of 4).
    UnalignedExtension,
    /// A request and 8 bytes of 1 (no extension field, no MAC).
    StrayBytes,
    /// A request padded with zeros to 1400 bytes.
    Oversize,
    /// A version-4 header of mode 0..=7 other than 3 (0, 1, 2, 4, 5, 6, 7).
    Mode(u8),
    /// A mode-3 header of version 0, 5, 6 or 7.
    Version(u8),
}

/// Every class, in the order `all` expands to.
pub const ALL: [JunkClass; 20] = [
    JunkClass::Empty,
    JunkClass::Short,
    JunkClass::BadLength,
    JunkClass::ZeroTrailer,
    JunkClass::OverlongExtension,
    JunkClass::ShortExtension,
    JunkClass::UnalignedExtension,
    JunkClass::StrayBytes,
    JunkClass::Oversize,
    JunkClass::Mode(0),
    JunkClass::Mode(1),
    JunkClass::Mode(2),
    JunkClass::Mode(4),
    JunkClass::Mode(5),
    JunkClass::Mode(6),
    JunkClass::Mode(7),
    JunkClass::Version(0),
    JunkClass::Version(5),
    JunkClass::Version(6),
    JunkClass::Version(7),
];

/// The name that stands for every class.
pub const ALL_NAME: &str = "all";

impl JunkClass {
    /// The class's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            JunkClass::Empty => "empty",
            JunkClass::Short => "short",
            JunkClass::BadLength => "bad-length",
            JunkClass::ZeroTrailer => "zero-trailer",
            JunkClass::OverlongExtension => "overlong-extension",
            JunkClass::ShortExtension => "short-extension",
            JunkClass::UnalignedExtension => "unaligned-extension",
            JunkClass::StrayBytes => "stray-bytes",
            JunkClass::Oversize => "oversize",
            JunkClass::Mode(0) => "mode-0",
            JunkClass::Mode(1) => "mode-1",
            JunkClass::Mode(2) => "mode-2",
            JunkClass::Mode(4) => "mode-4",
            JunkClass::Mode(5) => "mode-5",
            JunkClass::Mode(6) => "mode-6",
            JunkClass::Mode(_) => "mode-7",
            JunkClass::Version(0) => "version-0",
            JunkClass::Version(5) => "version-5",
            JunkClass::Version(6) => "version-6",
            JunkClass::Version(_) => "version-7",
        }
    }

    /// The class called `name` (not `all`).
    pub fn from_name(name: &str) -> Option<JunkClass> {
        ALL.iter().copied().find(|c| c.name() == name)
    }

    /// The datagram this class sends.
    pub fn bytes(self) -> Vec<u8> {
        let request = base_request();
        let with_trailer = |trailer: &[u8]| [request.as_slice(), trailer].concat();
        // An extension field header: type 0x0001, then the length field.
        let field = |length: u8, sent: usize| {
            let mut f = vec![0u8; sent];
            f[..4].copy_from_slice(&[0, 1, 0, length]);
            with_trailer(&f)
        };
        match self {
            JunkClass::Empty => Vec::new(),
            JunkClass::Short => request[..HEADER_LEN - 1].to_vec(),
            JunkClass::BadLength => with_trailer(&[0; 2]),
            JunkClass::ZeroTrailer => with_trailer(&[0; 952]),
            JunkClass::OverlongExtension => field(64, 32),
            JunkClass::ShortExtension => field(8, 32),
            JunkClass::UnalignedExtension => field(30, 32),
            JunkClass::StrayBytes => with_trailer(&[1; 8]),
            JunkClass::Oversize => with_trailer(&[0; 1400 - HEADER_LEN]),
            JunkClass::Mode(mode) => {
                let mut r = request;
                r[0] = 4 << 3 | (mode & 7);
                r.to_vec()
            }
            JunkClass::Version(version) => {
                let mut r = request;
                r[0] = (version & 7) << 3 | 3;
                r.to_vec()
            }
        }
    }
}

impl std::fmt::Display for JunkClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses a comma-separated list of class names (`all` for every class)
/// into distinct classes, in the order given.
pub fn parse_classes(text: &str) -> Result<Vec<JunkClass>, String> {
    let mut out: Vec<JunkClass> = Vec::new();
    for name in text.split(',').map(str::trim) {
        let add: Vec<JunkClass> = if name == ALL_NAME {
            ALL.to_vec()
        } else if let Some(c) = JunkClass::from_name(name) {
            vec![c]
        } else {
            let names: Vec<&str> = ALL.iter().map(|c| c.name()).collect();
            return Err(format!(
                "`{name}` is not a junk class; choose from {}, or {ALL_NAME}",
                names.join(", ")
            ));
        };
        for c in add {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request of tests/wire.rs `client_request(4, 42)`.
    fn wire_request() -> Vec<u8> {
        let mut r = vec![0u8; 48];
        r[0] = 0x23;
        r[2] = 6;
        r[47] = 42;
        r
    }

    #[test]
    fn the_base_is_a_plain_version_4_request() {
        assert_eq!(base_request().to_vec(), wire_request());
    }

    #[test]
    fn every_class_has_the_bytes_of_the_wire_suite() {
        let req = wire_request();
        let with = |t: &[u8]| [req.as_slice(), t].concat();
        let ef = |len: u8| with(&[[0u8, 1, 0, len].as_slice(), &[0; 28]].concat());
        let mut want: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("short", req[..47].to_vec()),
            ("bad-length", with(&[0, 0])),
            ("zero-trailer", with(&[0; 952])),
            ("overlong-extension", ef(64)),
            ("short-extension", ef(8)),
            ("unaligned-extension", ef(30)),
            ("stray-bytes", with(&[1; 8])),
            ("oversize", with(&[0; 1352])),
        ];
        for mode in [0u8, 1, 2, 4, 5, 6, 7] {
            let mut r = req.clone();
            r[0] = 4 << 3 | mode;
            want.push((
                [
                    "mode-0", "mode-1", "mode-2", "", "mode-4", "mode-5", "mode-6", "mode-7",
                ][mode as usize],
                r,
            ));
        }
        for (version, name) in [
            (0u8, "version-0"),
            (5, "version-5"),
            (6, "version-6"),
            (7, "version-7"),
        ] {
            let mut r = req.clone();
            r[0] = version << 3 | 3;
            want.push((name, r));
        }
        assert_eq!(want.len(), ALL.len());
        for (class, (name, bytes)) in ALL.iter().zip(&want) {
            assert_eq!(class.name(), *name);
            assert_eq!(&class.bytes(), bytes, "{name}");
            assert_eq!(JunkClass::from_name(name), Some(*class));
        }
        let lens: Vec<usize> = ALL[..9].iter().map(|c| c.bytes().len()).collect();
        assert_eq!(lens, [0, 47, 50, 1000, 80, 80, 80, 56, 1400]);
        assert_eq!(JunkClass::Mode(6).bytes()[0], 0x26);
        assert_eq!(JunkClass::Version(5).bytes()[0], 0x2b);
    }

    #[test]
    fn class_lists_parse_with_all_and_without_repeats() {
        assert_eq!(
            parse_classes("empty,mode-6").unwrap(),
            vec![JunkClass::Empty, JunkClass::Mode(6)]
        );
        assert_eq!(parse_classes("all").unwrap(), ALL.to_vec());
        assert_eq!(parse_classes("mode-7,all").unwrap().len(), ALL.len());
        assert_eq!(
            parse_classes("short, short").unwrap(),
            vec![JunkClass::Short]
        );
        let err = parse_classes("empty,mode-3").unwrap_err();
        assert!(
            err.contains("`mode-3` is not a junk class") && err.contains("version-7"),
            "{err}"
        );
        assert!(parse_classes("").is_err());
    }
}
