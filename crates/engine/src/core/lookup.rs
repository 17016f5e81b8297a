//! Lookups for `ps` filters that need the image store.

use super::Engine;
use crate::state::ContainerRecord;

impl Engine {
    /// Docker's `ancestor` filter: the container's image is the one `reference` names (a name
    /// with or without tag, or an id or id prefix).
    pub fn ancestor_matches(&self, record: &ContainerRecord, reference: &str) -> bool {
        if record.config.image == reference {
            return true;
        }
        let bare = |s: &str| s.trim_start_matches("sha256:").to_string();
        if reference.len() >= 4
            && reference.chars().all(|c| c.is_ascii_hexdigit() || c == ':')
            && bare(&record.image_id).starts_with(&bare(reference))
        {
            return true;
        }
        self.inner
            .images
            .resolve(reference)
            .is_ok_and(|image| image.id == record.image_id)
    }
}
