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
