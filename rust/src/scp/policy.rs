//! The [dicom] access policy, and which SOP classes the listener serves.

use super::{ListenerConfig, STORAGE_COMMITMENT, VERIFICATION};

/// A configured remote AE and what it may do here.
#[derive(Debug, Clone)]
pub struct KnownAe {
    pub aet: String,
    /// The addresses its host resolves to (checked when `check_modality_host`).
    pub addresses: Vec<String>,
    pub echo: bool,
    pub store: bool,
}

/// The [dicom] access policy, for the services served here.
#[derive(Debug, Clone)]
pub struct Policy {
    pub ae_title: String,
    pub check_called_aet: bool,
    pub always_allow_echo: bool,
    pub always_allow_store: bool,
    pub check_modality_host: bool,
    pub known: Vec<KnownAe>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Echo,
    Store,
}

impl Policy {
    pub fn allows(&self, calling_ae: &str, address: &str, service: Service) -> bool {
        let known = self
            .known
            .iter()
            .find(|k| k.aet == calling_ae)
            .filter(|k| !self.check_modality_host || k.addresses.iter().any(|a| a == address));
        match (known, service) {
            (Some(k), Service::Echo) => k.echo,
            (Some(k), Service::Store) => k.store,
            (None, Service::Echo) => self.always_allow_echo,
            (None, Service::Store) => self.always_allow_store,
        }
    }
}

/// The root of the UIDs the standard defines (PS3.5 9.1): any other SOP class is private.
const DICOM_ROOT: &str = "1.2.840.10008.";

impl ListenerConfig {
    pub(super) fn serves_class(&self, abstract_syntax: &str) -> bool {
        abstract_syntax == VERIFICATION
            || self.is_storage(abstract_syntax)
            || self.is_query(abstract_syntax)
    }

    /// Whether instances of `sop_class` are stored here (and sent back by C-GET).
    pub(super) fn is_storage(&self, sop_class: &str) -> bool {
        self.storage_classes.contains(sop_class)
            || (self.private_classes && !sop_class.starts_with(DICOM_ROOT))
    }

    pub(super) fn is_query(&self, abstract_syntax: &str) -> bool {
        abstract_syntax == STORAGE_COMMITMENT
            || self.find_classes.contains(abstract_syntax)
            || self.move_classes.contains(abstract_syntax)
            || self.retrieve_classes.contains(abstract_syntax)
    }
}
