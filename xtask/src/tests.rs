//! Whole-repository checks of the generated code against the contracts.

use crate::codegen::repo_root;
use crate::contract::{CONTRACTS, Contract};
use heck::{ToSnakeCase, ToUpperCamelCase};
use std::collections::BTreeSet;

fn parse(path: &std::path::Path) -> syn::File {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Method names of the trait `name` in `file`.
fn trait_methods(file: &syn::File, name: &str) -> BTreeSet<String> {
    file.items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Trait(t) if t.ident == name => Some(t),
            _ => None,
        })
        .flat_map(|t| t.items.iter())
        .filter_map(|item| match item {
            syn::TraitItem::Fn(f) => Some(f.sig.ident.to_string()),
            _ => None,
        })
        .collect()
}

/// Names of structs and enums declared at the top level of `file`.
fn type_names(file: &syn::File) -> BTreeSet<String> {
    file.items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Struct(s) => Some(s.ident.to_string()),
            syn::Item::Enum(e) => Some(e.ident.to_string()),
            _ => None,
        })
        .collect()
}

/// Public method names of `impl Client` blocks.
fn client_methods(file: &syn::File) -> BTreeSet<String> {
    file.items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Impl(i) if i.trait_.is_none() => Some(i),
            _ => None,
        })
        .filter(|i| matches!(&*i.self_ty, syn::Type::Path(p) if p.path.is_ident("Client")))
        .flat_map(|i| i.items.iter())
        .filter_map(|item| match item {
            syn::ImplItem::Fn(f) if matches!(f.vis, syn::Visibility::Public(_)) => Some(f.sig.ident.to_string()),
            _ => None,
        })
        .collect()
}

/// Every operationId of every contract has a trait method, a client method and its
/// request and response types — counted against the YAML itself.
#[test]
fn every_operation_has_a_trait_method_client_method_and_types() {
    let root = repo_root();
    for info in CONTRACTS {
        let contract = Contract::load(&root.join("openapi").join(info.file)).expect("contract loads");
        let yaml_ids: Vec<String> = contract.operations.iter().map(|op| op.id.clone()).collect();
        assert!(!yaml_ids.is_empty(), "{} has operations", info.file);

        let server = parse(&root.join(format!("generated/{}-server/src/server.rs", info.short)));
        let client = parse(&root.join(format!("generated/{}-client/src/client.rs", info.short)));
        let methods = trait_methods(&server, info.trait_name);
        let types = type_names(&server);
        let client_methods = client_methods(&client);

        let expected_methods: BTreeSet<String> = yaml_ids.iter().map(|id| id.to_snake_case()).collect();
        let operation_methods: BTreeSet<String> = methods.iter().filter(|m| *m != "authenticate").cloned().collect();
        assert_eq!(operation_methods, expected_methods, "{}: trait methods vs operationIds", info.file);
        assert_eq!(operation_methods.len(), yaml_ids.len(), "{}: one trait method per operation", info.file);

        for id in &yaml_ids {
            let camel = id.to_upper_camel_case();
            for suffix in ["Request", "Response"] {
                assert!(types.contains(&format!("{camel}{suffix}")), "{}: {camel}{suffix} is missing", info.file);
            }
            assert!(
                client_methods.contains(&id.to_snake_case()),
                "{}: client method {} is missing",
                info.file,
                id.to_snake_case()
            );
        }
        let request_types = types.iter().filter(|t| t.ends_with("Request")).count();
        assert!(
            request_types >= yaml_ids.len(),
            "{}: {request_types} request types for {} operations",
            info.file,
            yaml_ids.len()
        );
    }
}

/// Finds `#[allow]`/`#[expect]` attributes and long string literals outside doc comments.
#[derive(Default)]
struct Unreadable {
    allows: Vec<String>,
    long_literals: Vec<usize>,
}

impl<'ast> syn::visit::Visit<'ast> for Unreadable {
    fn visit_attribute(&mut self, attribute: &'ast syn::Attribute) {
        if attribute.path().is_ident("allow") || attribute.path().is_ident("expect") {
            self.allows.push(quote::ToTokens::to_token_stream(attribute).to_string());
        }
        // Doc comments are not code; their text is the contract's.
    }

    fn visit_lit_str(&mut self, literal: &'ast syn::LitStr) {
        if literal.value().len() > 200 {
            self.long_literals.push(literal.value().len());
        }
    }
}

/// The generated servers read like hand-written code: no lint is silenced, schemas are
/// JSON files rather than escaped literals, response enums hold only what an
/// implementation returns itself, and the workspace's lints (`forbid(unsafe_code)`)
/// reach every generated crate.
#[test]
fn generated_servers_are_readable_and_linted() {
    let root = repo_root();
    for info in CONTRACTS {
        let contract = Contract::load(&root.join("openapi").join(info.file)).expect("contract loads");
        let server = parse(&root.join(format!("generated/{}-server/src/server.rs", info.short)));
        let mut found = Unreadable::default();
        syn::visit::visit_file(&mut found, &server);
        assert!(found.allows.is_empty(), "{}: {:?}", info.file, found.allows);
        assert!(found.long_literals.is_empty(), "{}: string literals of {:?} bytes", info.file, found.long_literals);

        for op in &contract.operations {
            let name = format!("{}Response", op.id.to_upper_camel_case());
            let variants: BTreeSet<String> = server
                .items
                .iter()
                .find_map(|item| match item {
                    syn::Item::Enum(e) if e.ident == name => Some(e),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("{}: {name} is missing", info.file))
                .variants
                .iter()
                .map(|v| v.ident.to_string())
                .collect();
            let shared_error = |r: &crate::contract::Response| {
                r.content
                    .iter()
                    .any(|m| m.schema.get("$ref").and_then(|v| v.as_str()) == Some("#/components/schemas/Error"))
            };
            let expected: BTreeSet<String> = op
                .responses
                .iter()
                .filter(|r| r.status < 400 || !shared_error(r))
                .map(|r| crate::server::variant_name(r.status))
                .collect();
            assert_eq!(variants, expected, "{}: the variants of {name}", info.file);
            assert!(op.success_responses().all(|r| variants.contains(&crate::server::variant_name(r.status))));
        }

        for side in ["client", "server"] {
            let manifest = std::fs::read_to_string(root.join(format!("generated/{}-{side}/Cargo.toml", info.short)))
                .expect("a generated manifest");
            assert!(
                manifest.contains("\n[lints]\nworkspace = true\n"),
                "{}-{side} does not take the workspace lints",
                info.short
            );
        }
    }
}
