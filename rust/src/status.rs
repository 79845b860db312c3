//! DIMSE status codes (PS3.7 C, PS3.4 service classes): their one home, for Rust and Python.
//!
//! Python reads them from the native module (`_native.STATUS`, by these names), so a code is
//! written once in the project.

/// A status code and the name Python knows it by.
macro_rules! statuses {
    ($($(#[$doc:meta])* $name:ident = $code:expr;)*) => {
        $($(#[$doc])* pub const $name: u16 = $code;)*
        /// Every status above, by name.
        pub const ALL: &[(&str, u16)] = &[$((stringify!($name), $name)),*];
    };
}

statuses! {
    SUCCESS = 0x0000;
    PENDING = 0xFF00;
    /// C-FIND: a match, with optional keys not supported (PS3.4 C.4.1.1.4).
    PENDING_WARNING = 0xFF01;
    CANCEL = 0xFE00;
    NOT_AUTHORIZED = 0x0124;
    /// The request's SOP class is not what its presentation context was negotiated for, or
    /// a class not stored here (PS3.7 C; STOW-RS Failure Reason, PS3.18 Table I.2-2).
    SOP_CLASS_NOT_SUPPORTED = 0x0122;
    /// A failure of the archive itself (PS3.7 C: Processing failure).
    PROCESSING_FAILURE = 0x0110;
    OUT_OF_RESOURCES = 0xA700;
    /// C-GET and C-MOVE refused before any sub-operation: "Out of resources: unable to
    /// calculate number of matches" (PS3.4 C.4.2.1.5, C.4.3.1.4).
    OUT_OF_RESOURCES_MATCHES = 0xA701;
    /// C-GET, C-MOVE: every sub-operation failed (PS3.4 C.4.3.1.4).
    SUB_OPERATIONS_FAILED = 0xA702;
    MOVE_DESTINATION_UNKNOWN = 0xA801;
    /// C-STORE: the data set is not the instance the request names, or lacks its
    /// identifiers (PS3.4 B.2.3).
    DATA_SET_DOES_NOT_MATCH = 0xA900;
    /// C-GET, C-MOVE: one or more sub-operations failed or warned (PS3.4 C.4.3.1.4).
    SUB_OPERATIONS_WARNING = 0xB000;
    /// C-STORE "Cannot understand", C-FIND/GET/MOVE "Unable to process": the first of the
    /// Cxxx failures (PS3.4 B.2.3, C.4).
    CANNOT_UNDERSTAND = 0xC000;
    /// DIMSE-N statuses (PS3.7 C), also Storage Commitment Failure Reasons (PS3.4 J.3.3.1.1).
    MISSING_ATTRIBUTE = 0x0120;
    NO_SUCH_OBJECT_INSTANCE = 0x0112;
    CLASS_INSTANCE_CONFLICT = 0x0119;
    /// A STOW-RS Failure Reason no DIMSE exchange of the listener answers with (it
    /// acknowledges a duplicate before the index compares it): an instance whose SOP Instance
    /// UID other bytes hold, kept under [storage] on_duplicate = "keep" (PS3.7 C "Duplicate
    /// SOP Instance"; PS3.18 Table I.2-2 allows codes beyond its own).
    DUPLICATE_SOP_INSTANCE = 0x0111;
}

/// Whether `status` is a Warning of a retrieve's sub-operation or final response (Bxxx).
pub fn is_warning(status: u16) -> bool {
    (0xB000..=0xBFFF).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_one_code() {
        let mut codes: Vec<u16> = ALL.iter().map(|&(_, c)| c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ALL.len());
        assert!(ALL.contains(&("OUT_OF_RESOURCES", 0xA700)));
    }
}
