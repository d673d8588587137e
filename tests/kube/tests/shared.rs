//! The process-wide fixture: started once, shared by the tests of this file.

use cairn_testkube::shared;

#[test]
fn kubectl_errors_carry_stderr() {
    let err = shared()
        .kubectl(&["get", "configmap", "no-such-thing", "--namespace=default"])
        .expect_err("a missing object");
    assert!(format!("{err:#}").contains("not found"), "{err:#}");
}

#[test]
fn both_tests_see_one_api_server() {
    let f = shared();
    assert!(std::ptr::eq(f, shared()));
    let out = f
        .kubectl_stdin(
            &["apply", "-f", "-", "-o", "name"],
            r#"{"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "shared-test", "namespace": "default"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(out.trim(), "configmap/shared-test");
}
