//! Sandbox classes as the control plane checks them: the class a request names, the
//! class a function runs in (its own, else its namespace's, else `runc`), and whether the
//! live agents offer it. A class no node offers is refused when a function or namespace
//! asks for it, not when an instance would start (`fnrt_function::sandbox` has the names).

use std::collections::BTreeSet;

use fnrt_function::SandboxClass;

/// The class a request's `sandbox_class` field names: `None` when it is absent, null or
/// `""` (a client that marshals whole request objects sends `""` for a field left unset).
pub fn parse(value: Option<&str>) -> Result<Option<SandboxClass>, String> {
    match value {
        None | Some("") => Ok(None),
        Some(name) => name.parse().map(Some).map_err(|e: fnrt_function::sandbox::UnknownClass| e.to_string()),
    }
}

/// The class function `own` of a namespace whose default is `namespace` runs in.
pub fn effective(own: Option<SandboxClass>, namespace: Option<SandboxClass>) -> SandboxClass {
    own.or(namespace).unwrap_or_default()
}

/// Classes as a list for people: `runc, gvisor`.
pub fn list<'a>(classes: impl IntoIterator<Item = &'a SandboxClass>) -> String {
    classes.into_iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
}

/// What the live agents offer, for checking a request against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offered {
    /// How many live agents there are.
    pub nodes: usize,
    /// The classes at least one of them offers.
    pub classes: BTreeSet<SandboxClass>,
}

impl Offered {
    /// What agents offering `per_node` (each agent's classes) offer together.
    pub fn of(per_node: impl IntoIterator<Item = Vec<SandboxClass>>) -> Offered {
        let mut offered = Offered::default();
        for classes in per_node {
            offered.nodes += 1;
            offered.classes.extend(classes);
        }
        offered
    }

    /// Refuses `class` when no live agent offers it. With no agent at all the default
    /// class is let through (a function created before any node joined is placed once
    /// one does, as before classes); any other is refused, since nothing says a node
    /// offering it will ever join.
    pub fn check(&self, class: SandboxClass) -> Result<(), String> {
        if self.classes.contains(&class) || (self.nodes == 0 && class.is_default()) {
            return Ok(());
        }
        let nodes = if self.nodes == 0 {
            "no node is connected".to_string()
        } else {
            format!("nodes offer {}", list(&self.classes))
        };
        Err(format!("sandbox_class {:?} is offered by no node: {nodes}", class.as_str()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused_with_a_bounded_message() {
        let huge = "g".repeat(1 << 20);
        let e = parse(Some(&huge)).unwrap_err();
        assert!(e.len() < 200, "{} bytes", e.len());
        let weird = "gvisor\n\u{202e}\0\"; DROP";
        let e = parse(Some(weird)).unwrap_err();
        assert!(!e.contains('\n') && !e.contains('\0') && !e.contains('\u{202e}'), "{e}");
        assert!(e.ends_with("is not a sandbox class: use runc or gvisor"), "{e}");
        assert!(parse(Some(" gvisor")).is_err());
    }

    #[test]
    fn absent_null_and_empty_inherit_and_the_namespace_default_applies() {
        assert_eq!(parse(None), Ok(None));
        assert_eq!(parse(Some("")), Ok(None));
        assert_eq!(parse(Some("gvisor")), Ok(Some(SandboxClass::Gvisor)));
        assert_eq!(parse(Some("kata")).unwrap_err(), "\"kata\" is not a sandbox class: use runc or gvisor");
        assert_eq!(effective(None, None), SandboxClass::Runc);
        assert_eq!(effective(None, Some(SandboxClass::Gvisor)), SandboxClass::Gvisor);
        assert_eq!(effective(Some(SandboxClass::Runc), Some(SandboxClass::Gvisor)), SandboxClass::Runc);
    }

    #[test]
    fn a_class_no_live_node_offers_is_refused_and_runc_waits_for_the_first_node() {
        let none = Offered::default();
        assert_eq!(none.check(SandboxClass::Runc), Ok(()));
        assert_eq!(
            none.check(SandboxClass::Gvisor).unwrap_err(),
            "sandbox_class \"gvisor\" is offered by no node: no node is connected"
        );
        let runc = Offered::of([vec![SandboxClass::Runc], vec![SandboxClass::Runc]]);
        assert_eq!(runc.nodes, 2);
        assert_eq!(
            runc.check(SandboxClass::Gvisor).unwrap_err(),
            "sandbox_class \"gvisor\" is offered by no node: nodes offer runc"
        );
        let gvisor_only = Offered::of([vec![SandboxClass::Gvisor]]);
        assert_eq!(
            gvisor_only.check(SandboxClass::Runc).unwrap_err(),
            "sandbox_class \"runc\" is offered by no node: nodes offer gvisor"
        );
        let both = Offered::of([vec![SandboxClass::Runc], vec![SandboxClass::Runc, SandboxClass::Gvisor]]);
        assert!(both.check(SandboxClass::Gvisor).is_ok() && both.check(SandboxClass::Runc).is_ok());
    }
}
