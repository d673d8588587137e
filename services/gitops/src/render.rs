//! A revision's files into Kubernetes objects.
//!
//! `*.yaml`/`*.yml` files hold any number of YAML documents, `*.json` files one
//! JSON value; either may be a `kind: List` whose items are expanded in place.
//! Other files are ignored. The output order is stable: files in the order
//! given (sorted by path), then documents, then list items. Every bad input is
//! refused with the file, the document and (for syntax errors) the position.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::SourceFile;

/// Limits on what one revision may render to.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// More objects than this refuses the revision (a runaway generator, a wrong path).
    pub max_objects: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            max_objects: 10_000,
        }
    }
}

/// One Kubernetes object as written in the repository.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// `apps/v1`, `v1`, ...
    pub api_version: String,
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` as written; defaulting happens later (it needs discovery).
    pub namespace: Option<String>,
    /// The whole document as JSON, without the fields a server sets.
    pub body: Value,
    /// Where it came from: `apps/web.yaml#2` (file, 1-based document index),
    /// with `/items/N` (0-based) appended for an item of a `List`.
    pub origin: String,
}

impl Object {
    /// The API group: `apps` for `apps/v1`, empty for the core group (`v1`).
    pub fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }

    /// The API version without the group: `v1` for `apps/v1`.
    pub fn version(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or(self.api_version.as_str(), |(_, v)| v)
    }

    /// The identity two objects must not share: `Deployment.apps web/frontend`,
    /// `ConfigMap web/settings`, `Namespace web`.
    pub fn key(&self) -> String {
        let kind = match self.group() {
            "" => self.kind.clone(),
            group => format!("{}.{group}", self.kind),
        };
        match &self.namespace {
            Some(ns) => format!("{kind} {ns}/{}", self.name),
            None => format!("{kind} {}", self.name),
        }
    }
}

/// Why a revision's files do not render.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RenderError {
    #[error("{path}: not UTF-8")]
    NotUtf8 { path: String },
    #[error("{path}, document {document}: YAML error at line {line} column {column}: {message}")]
    Yaml {
        path: String,
        document: usize,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: JSON error at line {line} column {column}: {message}")]
    Json {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin}: not a mapping (an object must be a key: value mapping)")]
    NotAMapping { origin: String },
    #[error("{origin}: {field} is missing or empty")]
    Missing { origin: String, field: &'static str },
    #[error("{origin}: {field} must be a string")]
    NotAString { origin: String, field: &'static str },
    #[error("{origin}: metadata.generateName is not supported; give the object a metadata.name")]
    GenerateName { origin: String },
    #[error("{origin}: the List's items must be a sequence")]
    BadList { origin: String },
    #[error("{origin}: cannot be represented as JSON: {message}")]
    Unrepresentable { origin: String, message: String },
    #[error("{key} is defined twice: in {first} and in {second}")]
    Duplicate {
        key: String,
        first: String,
        second: String,
    },
    #[error("more than {max} objects; refusing the revision")]
    TooMany { max: usize },
}

/// Renders `files` (sorted by path) into objects, in file then document order.
/// Refuses duplicates already visible as written (see [`check_duplicates`]).
pub fn render(files: &[SourceFile], opts: &RenderOptions) -> Result<Vec<Object>, RenderError> {
    let mut objects = Vec::new();
    for file in files {
        let Some(format) = Format::of(&file.path) else {
            continue;
        };
        let text = std::str::from_utf8(&file.data).map_err(|_| RenderError::NotUtf8 {
            path: file.path.clone(),
        })?;
        for (origin, value) in format.documents(&file.path, text)? {
            expand(value, origin, &mut objects, opts)?;
        }
    }
    check_duplicates(&objects)?;
    Ok(objects)
}

/// Refuses two objects with the same group, kind, namespace and name; run it
/// again once namespaces are defaulted. The error names both origins.
pub fn check_duplicates(objects: &[Object]) -> Result<(), RenderError> {
    let mut seen: HashMap<(&str, &str, Option<&str>, &str), &str> = HashMap::new();
    for object in objects {
        let key = (
            object.group(),
            object.kind.as_str(),
            object.namespace.as_deref(),
            object.name.as_str(),
        );
        if let Some(first) = seen.insert(key, &object.origin) {
            return Err(RenderError::Duplicate {
                key: object.key(),
                first: first.to_owned(),
                second: object.origin.clone(),
            });
        }
    }
    Ok(())
}

/// How a file is read, by its name's ending.
#[derive(Clone, Copy)]
enum Format {
    Yaml,
    Json,
}

impl Format {
    fn of(path: &str) -> Option<Format> {
        let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    /// The file's non-null documents as JSON, each with its origin.
    fn documents(self, path: &str, text: &str) -> Result<Vec<(String, Value)>, RenderError> {
        match self {
            Format::Json => {
                let value: Value = serde_json::from_str(text).map_err(|e| RenderError::Json {
                    path: path.to_owned(),
                    line: e.line(),
                    column: e.column(),
                    message: e.to_string(),
                })?;
                Ok(if value.is_null() {
                    Vec::new()
                } else {
                    vec![(format!("{path}#1"), value)]
                })
            }
            Format::Yaml => {
                let mut out = Vec::new();
                for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
                    let index = i + 1;
                    let yaml_error = |e: serde_yaml::Error| {
                        let (line, column) =
                            e.location().map_or((0, 0), |l| (l.line(), l.column()));
                        RenderError::Yaml {
                            path: path.to_owned(),
                            document: index,
                            line,
                            column,
                            message: without_location(&e.to_string(), line, column),
                        }
                    };
                    let mut value: serde_yaml::Value =
                        serde::Deserialize::deserialize(document).map_err(yaml_error)?;
                    let origin = format!("{path}#{index}");
                    value
                        .apply_merge()
                        .map_err(|e| RenderError::Unrepresentable {
                            origin: origin.clone(),
                            message: e.to_string(),
                        })?;
                    if value.is_null() {
                        continue;
                    }
                    let json =
                        yaml_to_json(value).map_err(|message| RenderError::Unrepresentable {
                            origin: origin.clone(),
                            message,
                        })?;
                    out.push((origin, json));
                }
                Ok(out)
            }
        }
    }
}

/// serde_yaml's message without the position it appends (the error shows it once).
fn without_location(message: &str, line: usize, column: usize) -> String {
    let suffix = format!(" at line {line} column {column}");
    message.strip_suffix(&suffix).unwrap_or(message).to_owned()
}

/// Adds one document to `out`: a `List`'s items, or the document itself.
fn expand(
    value: Value,
    origin: String,
    out: &mut Vec<Object>,
    opts: &RenderOptions,
) -> Result<(), RenderError> {
    let Value::Object(mut map) = value else {
        return Err(RenderError::NotAMapping { origin });
    };
    if map.get("kind").and_then(Value::as_str) == Some("List") {
        let items = match map.remove("items") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(RenderError::BadList { origin }),
        };
        for (i, item) in items.into_iter().enumerate() {
            let origin = format!("{origin}/items/{i}");
            let Value::Object(item) = item else {
                return Err(RenderError::NotAMapping { origin });
            };
            push(object(item, origin)?, out, opts)?;
        }
        return Ok(());
    }
    push(object(map, origin)?, out, opts)
}

fn push(object: Object, out: &mut Vec<Object>, opts: &RenderOptions) -> Result<(), RenderError> {
    if out.len() >= opts.max_objects {
        return Err(RenderError::TooMany {
            max: opts.max_objects,
        });
    }
    out.push(object);
    Ok(())
}

/// Checks the identifying fields and strips the ones only a server may set.
fn object(mut map: Map<String, Value>, origin: String) -> Result<Object, RenderError> {
    map.remove("status");
    let metadata = match map.get_mut("metadata") {
        Some(Value::Object(metadata)) => {
            for field in [
                "managedFields",
                "resourceVersion",
                "uid",
                "creationTimestamp",
            ] {
                metadata.remove(field);
            }
            Some(&*metadata)
        }
        None | Some(Value::Null) => None,
        Some(_) => {
            return Err(RenderError::NotAMapping {
                origin: format!("{origin} (metadata)"),
            });
        }
    };
    let name = match string(
        metadata.and_then(|m| m.get("name")),
        "metadata.name",
        &origin,
    )? {
        Some(name) => name,
        None if metadata.and_then(|m| m.get("generateName")).is_some() => {
            return Err(RenderError::GenerateName { origin });
        }
        None => {
            return Err(RenderError::Missing {
                origin,
                field: "metadata.name",
            });
        }
    };
    let namespace = string(
        metadata.and_then(|m| m.get("namespace")),
        "metadata.namespace",
        &origin,
    )?;
    let api_version = string(map.get("apiVersion"), "apiVersion", &origin)?.ok_or_else(|| {
        RenderError::Missing {
            origin: origin.clone(),
            field: "apiVersion",
        }
    })?;
    let kind = string(map.get("kind"), "kind", &origin)?.ok_or_else(|| RenderError::Missing {
        origin: origin.clone(),
        field: "kind",
    })?;
    Ok(Object {
        api_version,
        kind,
        name,
        namespace,
        body: Value::Object(map),
        origin,
    })
}

/// A field that must be a string when present; absent, null and empty are `None`.
fn string(
    value: Option<&Value>,
    field: &'static str,
    origin: &str,
) -> Result<Option<String>, RenderError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(RenderError::NotAString {
            origin: origin.to_owned(),
            field,
        }),
    }
}

/// YAML into JSON the way kubectl reads it: tags dropped, scalar keys as strings.
fn yaml_to_json(value: serde_yaml::Value) -> Result<Value, String> {
    use serde_yaml::Value as Y;
    Ok(match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| format!("the number {n}"))?
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(mapping) => {
            let mut map = Map::with_capacity(mapping.len());
            for (key, value) in mapping {
                let key = match key {
                    Y::String(s) => s,
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    Y::Null => "null".to_owned(),
                    Y::Tagged(t) => match t.value {
                        Y::String(s) => s,
                        _ => return Err("a tagged non-string mapping key".to_owned()),
                    },
                    Y::Sequence(_) | Y::Mapping(_) => {
                        return Err("a sequence or mapping as a mapping key".to_owned());
                    }
                };
                map.insert(key, yaml_to_json(value)?);
            }
            Value::Object(map)
        }
        Y::Tagged(tagged) => yaml_to_json(tagged.value)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (workspace lint `unwrap_used`)
mod tests {
    use super::*;

    fn file(path: &str, data: &str) -> SourceFile {
        SourceFile {
            path: path.to_owned(),
            data: data.as_bytes().to_vec(),
        }
    }

    fn run(files: &[SourceFile]) -> Result<Vec<Object>, RenderError> {
        render(files, &RenderOptions::default())
    }

    fn cm(name: &str) -> String {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: web\n")
    }

    #[test]
    fn multi_document_yaml_in_order_with_document_indexes() {
        let text = format!("---\n{}---\n---\nnull\n---\n{}", cm("a"), cm("b"));
        let objects = run(&[file("apps/web.yaml", &text)]).unwrap();
        let got: Vec<_> = objects
            .iter()
            .map(|o| (o.name.as_str(), o.origin.as_str()))
            .collect();
        assert_eq!(got, [("a", "apps/web.yaml#1"), ("b", "apps/web.yaml#4")]);
        assert_eq!(objects[0].namespace.as_deref(), Some("web"));
        assert_eq!(objects[0].body["kind"], "ConfigMap");
    }

    #[test]
    fn stable_order_files_then_documents_and_other_files_ignored() {
        let files = [
            file("a.yml", &format!("{}---\n{}", cm("a1"), cm("a2"))),
            file(
                "b.json",
                r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"web"}}"#,
            ),
            file("b.md", "# not: [yaml"),
            file("c/d.YAML", &cm("d")),
        ];
        let first = run(&files).unwrap();
        let names: Vec<_> = first.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["a1", "a2", "web", "d"]);
        assert_eq!(first[2].namespace, None);
        assert_eq!(first, run(&files).unwrap());
    }

    #[test]
    fn group_and_version() {
        let objects = run(&[file(
            "d.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n---\n",
        )])
        .unwrap();
        assert_eq!((objects[0].group(), objects[0].version()), ("apps", "v1"));
        let objects = run(&[file("c.yaml", &cm("x"))]).unwrap();
        assert_eq!((objects[0].group(), objects[0].version()), ("", "v1"));
    }

    #[test]
    fn yaml_syntax_error_names_line_column_and_document() {
        let text = format!(
            "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: [unclosed\n",
            cm("a")
        );
        match run(&[file("apps/bad.yaml", &text)]) {
            Err(RenderError::Yaml {
                path,
                document,
                line,
                column,
                message,
            }) => {
                assert_eq!((path.as_str(), document), ("apps/bad.yaml", 2));
                assert_eq!(line, 10, "{message}");
                assert!(column > 0);
            }
            other => panic!("{other:?}"),
        }
        let err = run(&[file("x.yaml", "a: b\n  c: d: e\n")]).unwrap_err();
        assert!(
            matches!(
                err,
                RenderError::Yaml {
                    line: 2,
                    document: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(
            !err.to_string().ends_with("column 4"),
            "the position once: {err}"
        );
    }

    #[test]
    fn duplicate_yaml_keys_are_refused() {
        let err = run(&[file("x.yaml", "apiVersion: v1\nkind: A\nkind: B\n")]).unwrap_err();
        // serde_yaml places this at the mapping's start.
        assert!(matches!(err, RenderError::Yaml { line: 1, .. }), "{err}");
        assert!(
            err.to_string()
                .contains("duplicate entry with key \"kind\""),
            "{err}"
        );
    }

    #[test]
    fn json_errors_and_lists() {
        let err = run(&[file("x.json", "{\n  \"kind\": \n}")]).unwrap_err();
        assert!(matches!(err, RenderError::Json { line: 3, .. }), "{err}");
        let list = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}},
            {"apiVersion":"v1","kind":"Secret","metadata":{"name":"b"}}]}"#;
        let objects = run(&[file("l.json", list)]).unwrap();
        let got: Vec<_> = objects
            .iter()
            .map(|o| (o.kind.as_str(), o.origin.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("ConfigMap", "l.json#1/items/0"),
                ("Secret", "l.json#1/items/1")
            ]
        );
    }

    #[test]
    fn yaml_list_is_expanded_in_place() {
        let text = format!(
            "{}---\napiVersion: v1\nkind: List\nitems:\n- {{apiVersion: v1, kind: ConfigMap, metadata: {{name: b}}}}\n- {{apiVersion: v1, kind: ConfigMap, metadata: {{name: c}}}}\n---\n{}",
            cm("a"),
            cm("d")
        );
        let objects = run(&[file("l.yaml", &text)]).unwrap();
        let names: Vec<_> = objects.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert_eq!(objects[2].origin, "l.yaml#2/items/1");
        let err = run(&[file("l.yaml", "kind: List\nitems: {a: b}\n")]).unwrap_err();
        assert_eq!(
            err,
            RenderError::BadList {
                origin: "l.yaml#1".into()
            }
        );
        let err = run(&[file("l.yaml", "kind: List\nitems: [3]\n")]).unwrap_err();
        assert_eq!(
            err,
            RenderError::NotAMapping {
                origin: "l.yaml#1/items/0".into()
            }
        );
    }

    #[test]
    fn not_utf8_and_not_a_mapping() {
        let bad = SourceFile {
            path: "x.yaml".into(),
            data: vec![b'a', 0xff, b'\n'],
        };
        assert_eq!(
            run(&[bad]).unwrap_err(),
            RenderError::NotUtf8 {
                path: "x.yaml".into()
            }
        );
        let err = run(&[file("x.yaml", &format!("{}---\n- a\n- b\n", cm("a")))]).unwrap_err();
        assert_eq!(
            err,
            RenderError::NotAMapping {
                origin: "x.yaml#2".into()
            }
        );
        let err = run(&[file("x.json", "\"text\"")]).unwrap_err();
        assert_eq!(
            err,
            RenderError::NotAMapping {
                origin: "x.json#1".into()
            }
        );
    }

    #[test]
    fn missing_fields() {
        let missing = |text: &str| match run(&[file("m.yaml", text)]) {
            Err(RenderError::Missing { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(missing("kind: A\nmetadata: {name: a}\n"), "apiVersion");
        assert_eq!(
            missing("apiVersion: ''\nkind: A\nmetadata: {name: a}\n"),
            "apiVersion"
        );
        assert_eq!(missing("apiVersion: v1\nmetadata: {name: a}\n"), "kind");
        assert_eq!(missing("apiVersion: v1\nkind: A\n"), "metadata.name");
        assert_eq!(
            missing("apiVersion: v1\nkind: A\nmetadata: {name: ''}\n"),
            "metadata.name"
        );
        let err = run(&[file(
            "m.yaml",
            "apiVersion: v1\nkind: A\nmetadata: {generateName: a-}\n",
        )])
        .unwrap_err();
        assert_eq!(
            err,
            RenderError::GenerateName {
                origin: "m.yaml#1".into()
            }
        );
        assert!(err.to_string().contains("generateName is not supported"));
        let err = run(&[file(
            "m.yaml",
            "apiVersion: v1\nkind: A\nmetadata: {name: 3}\n",
        )])
        .unwrap_err();
        assert_eq!(
            err,
            RenderError::NotAString {
                origin: "m.yaml#1".into(),
                field: "metadata.name"
            }
        );
    }

    #[test]
    fn server_fields_are_stripped() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  uid: x\n  resourceVersion: '5'\n  creationTimestamp: null\n  managedFields: [{manager: kubectl}]\n  labels: {app: a}\ndata: {k: v}\nstatus: {phase: x}\n";
        let objects = run(&[file("s.yaml", text)]).unwrap();
        let expected = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "labels": {"app": "a"}}, "data": {"k": "v"},
        });
        assert_eq!(objects[0].body, expected);
    }

    #[test]
    fn yaml_details_become_json_as_kubectl_reads_them() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\nbase: &b {x: 1}\nmerged: {<<: *b, y: 2.5}\ndata: {1: one, true: yes}\n";
        let body = &run(&[file("y.yaml", text)]).unwrap()[0].body;
        assert_eq!(body["merged"], serde_json::json!({"x": 1, "y": 2.5}));
        assert_eq!(body["data"], serde_json::json!({"1": "one", "true": "yes"}));
        let err = run(&[file(
            "y.yaml",
            "apiVersion: v1\nkind: A\nmetadata: {name: a}\nx: .nan\n",
        )])
        .unwrap_err();
        assert!(matches!(err, RenderError::Unrepresentable { .. }), "{err}");
    }

    #[test]
    fn duplicates_across_files_name_both_origins() {
        let err = run(&[
            file("a.yaml", &cm("x")),
            file("b/c.yaml", &format!("{}---\n{}", cm("y"), cm("x"))),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            RenderError::Duplicate {
                key: "ConfigMap web/x".into(),
                first: "a.yaml#1".into(),
                second: "b/c.yaml#2".into()
            }
        );
        // Same name in another namespace, group or kind is no duplicate.
        let other_ns = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: db}\n";
        let other_group =
            "apiVersion: example.com/v1\nkind: ConfigMap\nmetadata: {name: x, namespace: web}\n";
        assert_eq!(
            run(&[
                file("a.yaml", &cm("x")),
                file("b.yaml", other_ns),
                file("c.yaml", other_group)
            ])
            .unwrap()
            .len(),
            3
        );
    }

    #[test]
    fn duplicates_after_defaulting_and_across_versions() {
        let mut objects = run(&[
            file("a.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\n"),
            file("b.yaml", "apiVersion: apps/v1beta2\nkind: Deployment\nmetadata: {name: w, namespace: default}\n"),
        ])
        .unwrap();
        assert!(check_duplicates(&objects).is_ok());
        objects[0].namespace = Some("default".into());
        let err = check_duplicates(&objects).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Deployment.apps default/w is defined twice: in a.yaml#1 and in b.yaml#1"
        );
    }

    #[test]
    fn too_many_objects() {
        let text = (0..4)
            .map(|i| cm(&format!("c{i}")))
            .collect::<Vec<_>>()
            .join("---\n");
        let files = [file("t.yaml", &text)];
        assert_eq!(
            render(&files, &RenderOptions { max_objects: 4 })
                .unwrap()
                .len(),
            4
        );
        assert_eq!(
            render(&files, &RenderOptions { max_objects: 3 }).unwrap_err(),
            RenderError::TooMany { max: 3 }
        );
    }

    #[test]
    fn empty_files_render_nothing() {
        assert!(
            run(&[
                file("e.yaml", ""),
                file("f.yaml", "---\n# only a comment\n---\n"),
                file("n.json", "null")
            ])
            .unwrap()
            .is_empty()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any text in a manifest file renders or is refused with the file named.
        #[test]
        fn arbitrary_manifests_render_or_name_the_file(text in proptest::prelude::any::<String>(), json in proptest::prelude::any::<bool>()) {
            let path = if json { "apps/x.json" } else { "apps/x.yaml" };
            let files = [SourceFile { path: path.into(), data: text.into_bytes() }];
            if let Err(e) = render(&files, &RenderOptions::default()) {
                proptest::prop_assert!(e.to_string().contains("apps/x."), "{e}");
            }
        }

        /// Byte edits of a valid multi-document manifest.
        #[test]
        fn edited_manifests_render_or_name_the_file(edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 1..6)) {
            let mut bytes = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: default\ndata:\n  k: v\n---\napiVersion: apps/v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: s, namespace: default}\n".to_vec();
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let files = [SourceFile { path: "apps/edited.yaml".into(), data: String::from_utf8_lossy(&bytes).into_owned().into_bytes() }];
            if let Err(e) = render(&files, &RenderOptions::default()) {
                proptest::prop_assert!(e.to_string().contains("apps/edited.yaml"), "{e}");
            }
        }
    }
}
