//! The key root each guest gets (docs/sealed-model.md, "Key roots"), so that it can unseal
//! the models sealed to its images, and the line that reports it beside the isolation
//! level. Only the development root exists: a file of this host, which protects nothing
//! against a compromised host, and every report says so.

use std::path::Path;
use vmm::devices::virtio_llm::SealingRoot;
use vmm::guest_images::GuestImages;
use vmm::key_root::{DevelopmentRoot, KeyRoot, KeyRootError};

/// The root handed to a guest, and how the reports name it.
pub struct GuestRoot {
    /// Handed to the guest in its configuration; `None`: it refuses sealed models.
    pub sealing: Option<SealingRoot>,
    /// `development (no protection against a compromised host)`, or why there is none.
    pub description: String,
}

impl GuestRoot {
    /// The development root (in `file`, else where [`DevelopmentRoot::default_path`] says)
    /// for a guest booted from `images`. When `required` (a sealed model is to be loaded) a
    /// root that cannot be opened is an error; otherwise the guest goes without one and the
    /// report says why.
    pub fn for_guest(
        images: &GuestImages,
        file: Option<&Path>,
        required: bool,
    ) -> Result<Self, KeyRootError> {
        let path = match file {
            Some(p) => Ok(p.to_path_buf()),
            None => DevelopmentRoot::default_path(),
        };
        match path.and_then(|p| DevelopmentRoot::open_or_create(&p)) {
            Ok(root) => Ok(Self {
                sealing: Some(SealingRoot {
                    root: *root.secret(),
                    measurement: images.measurement(),
                }),
                description: root.describe().to_string(),
            }),
            Err(e) if !required => Ok(Self {
                sealing: None,
                description: format!("none ({e}; sealed models are refused)"),
            }),
            Err(e) => Err(e),
        }
    }

    /// The report line's text: `key root: ...`.
    pub fn report(&self) -> String {
        format!("key root: {}", self.description)
    }
}
