//! The identifiers every stored instance must carry: its SOP Class and SOP Instance UIDs and
//! the unique keys of its study and series (PS3.4 C.2.2.1.1: each entity of the hierarchy has a
//! non-empty unique key), read from what the scanner collected, and checked against what a
//! C-STORE request said it was sending (PS3.4 B.2.3: the data set must match the request).

use crate::scan::Summary;

pub const SOP_CLASS_UID: u32 = 0x0008_0016;
pub const SOP_INSTANCE_UID: u32 = 0x0008_0018;
pub const STUDY_INSTANCE_UID: u32 = 0x0020_000D;
pub const SERIES_INSTANCE_UID: u32 = 0x0020_000E;

/// The tags (with their VR) the scanner must collect for [`identity`] to read them.
pub const TAGS: [(u32, [u8; 2]); 4] = [
    (SOP_CLASS_UID, *b"UI"),
    (SOP_INSTANCE_UID, *b"UI"),
    (STUDY_INSTANCE_UID, *b"UI"),
    (SERIES_INSTANCE_UID, *b"UI"),
];

/// An instance's identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
}

/// Why an instance cannot be stored as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// A required identifier is absent or empty (its keyword).
    Missing(&'static str),
    /// The data set names another SOP Class or Instance than the request did.
    Mismatch {
        keyword: &'static str,
        requested: String,
        found: String,
    },
}

impl std::fmt::Display for IdentityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentityError::Missing(keyword) => {
                write!(f, "the data set has no {keyword} (or an empty one)")
            }
            IdentityError::Mismatch {
                keyword,
                requested,
                found,
            } => write!(
                f,
                "the request names {keyword} {requested} but the data set holds {found}"
            ),
        }
    }
}

impl std::error::Error for IdentityError {}

fn uid(summary: &Summary, tag: u32) -> String {
    summary
        .elements
        .iter()
        .find(|e| e.tag == tag)
        .map(|e| {
            String::from_utf8_lossy(&e.value)
                .trim_matches(|c: char| c == '\0' || c == ' ')
                .to_string()
        })
        .unwrap_or_default()
}

/// The instance's identifiers, all present; with `requested` (the C-STORE request's Affected
/// SOP Class and Instance UIDs), also equal to what the request named.
pub fn identity(
    summary: &Summary,
    requested: Option<(&str, &str)>,
) -> Result<Identity, IdentityError> {
    let identity = Identity {
        sop_class_uid: uid(summary, SOP_CLASS_UID),
        sop_instance_uid: uid(summary, SOP_INSTANCE_UID),
        study_instance_uid: uid(summary, STUDY_INSTANCE_UID),
        series_instance_uid: uid(summary, SERIES_INSTANCE_UID),
    };
    for (keyword, value) in [
        ("SOPClassUID", &identity.sop_class_uid),
        ("SOPInstanceUID", &identity.sop_instance_uid),
        ("StudyInstanceUID", &identity.study_instance_uid),
        ("SeriesInstanceUID", &identity.series_instance_uid),
    ] {
        if value.is_empty() {
            return Err(IdentityError::Missing(keyword));
        }
    }
    if let Some((class, instance)) = requested {
        for (keyword, requested, found) in [
            ("SOPClassUID", class, &identity.sop_class_uid),
            ("SOPInstanceUID", instance, &identity.sop_instance_uid),
        ] {
            let requested = requested.trim_matches(|c: char| c == '\0' || c == ' ');
            if requested != found {
                return Err(IdentityError::Mismatch {
                    keyword,
                    requested: requested.to_string(),
                    found: found.clone(),
                });
            }
        }
    }
    Ok(identity)
}
