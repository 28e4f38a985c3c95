//! Whose credentials a pull uses: the node's (`registry_auth_file`) or, for a deployed
//! function, its namespace's, handed over in its spec and kept in memory only.

use super::ImageStore;

impl ImageStore {
    /// The store pulling with `credentials` for their registry instead of the node's (a
    /// namespace's, handed over for its functions' pulls). Every pull asks the registry
    /// for the manifest with them, even of an image the node has: a function whose
    /// credentials cannot read an image does not get it from another tenant's pull.
    pub fn with_credentials(&self, credentials: Option<&fnrt_function::PullCredentials>) -> ImageStore {
        let Some(c) = credentials else { return self.clone() };
        let creds = fnrt_registry::Credentials { username: c.username.clone(), password: c.password.clone() };
        ImageStore { registry: self.registry.with_credentials(&c.registry, &creds), ..self.clone() }
    }
}
