//! `[access]`: which clients are served — the default, the `allow` and
//! `deny` prefixes, what a denied client gets — and their mapping to
//! [`crate::policy`]'s rules. A prefix that does not parse is refused by
//! the TOML reader at its line, with what is wrong.

use serde::Deserialize;

use crate::policy::{Access, AccessRules, Cidr, CidrError, DenyAction};

/// `[access]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AccessConfig {
    /// For clients no prefix holds.
    #[serde(default)]
    pub default: AccessDefault,
    /// Prefixes served.
    #[serde(default)]
    pub allow: Vec<Prefix>,
    /// Prefixes not served.
    #[serde(default)]
    pub deny: Vec<Prefix>,
    /// What a denied client gets.
    #[serde(default)]
    pub deny_action: DenyActionConfig,
}

/// `[access] default`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessDefault {
    /// Serve everyone no `deny` prefix holds.
    #[default]
    Allow,
    /// Serve only the `allow` prefixes.
    Deny,
}

/// `[access] deny-action`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenyActionConfig {
    /// Drop silently.
    #[default]
    Ignore,
    /// One KoD DENY per request (rate-limited when `[rate-limit]` is on).
    Kod,
}

/// One prefix of `allow` or `deny`: `ADDRESS/LEN` or one address, IPv4 or
/// IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Prefix(pub Cidr);

impl TryFrom<String> for Prefix {
    type Error = CidrError;

    fn try_from(s: String) -> Result<Prefix, CidrError> {
        s.parse().map(Prefix)
    }
}

impl AccessConfig {
    /// The rules for [`crate::policy::AccessList`].
    pub fn rules(&self) -> AccessRules {
        let cidrs = |list: &[Prefix]| list.iter().map(|p| p.0).collect();
        AccessRules {
            default: match self.default {
                AccessDefault::Allow => Access::Allow,
                AccessDefault::Deny => Access::Deny,
            },
            allow: cidrs(&self.allow),
            deny: cidrs(&self.deny),
        }
    }

    /// What a denied client gets, for [`crate::policy::Protection`].
    pub fn deny_action(&self) -> DenyAction {
        match self.deny_action {
            DenyActionConfig::Ignore => DenyAction::Ignore,
            DenyActionConfig::Kod => DenyAction::Kod,
        }
    }

    /// Allowed but probably not meant: `default = "deny"` with nothing
    /// allowed serves no one.
    pub(super) fn warning(&self) -> Option<String> {
        (self.default == AccessDefault::Deny && self.allow.is_empty()).then(|| {
            "`[access] default = \"deny\"` and nothing in `allow`: no client will be served"
                .to_owned()
        })
    }
}
