//! One client of the OCI distribution API for every fnrt binary: the agent pulls with it,
//! the control plane pushes code images and pins tags to digests with it. References are
//! parsed one way ([`ImageRef`]), credentials come from one file format ([`auth`]), and
//! plain HTTP is used only for the hosts the operator lists.

pub mod auth;
mod client;
mod ping;
pub mod policy;
mod push;
mod reference;

pub use auth::{load as load_credentials, AuthFileError, Credentials};
pub use client::{
    sha256, RawManifest, Registry, RegistryError, RegistrySettings, SettingsError, TlsSetupError, ACCEPT,
    MAX_MANIFEST_BYTES,
};
pub use ping::PingError;
pub use reference::{BadReference, ImageRef};
