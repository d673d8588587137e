//! Tables for people, JSON and YAML for scripts.

use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// One node's answer, as JSON/YAML prints it when several nodes were asked.
#[derive(Serialize)]
struct PerNode<'a, T: Serialize> {
    node: &'a str,
    result: &'a T,
}

/// Something that prints as a table: its column names and rows.
pub trait Tabular: Serialize {
    fn headers() -> &'static [&'static str];
    fn rows(&self) -> Vec<Vec<String>>;
}

/// Prints every node's answer: one value as itself, several as `[{node, result}]`
/// (JSON/YAML); tables get a NODE column when there is more than one node.
pub fn print<T: Tabular>(format: Format, answers: &[(String, T)]) -> Result<()> {
    match format {
        Format::Json | Format::Yaml => {
            let text = match answers {
                [(_, one)] => render(format, one)?,
                many => render(
                    format,
                    &many
                        .iter()
                        .map(|(node, result)| PerNode { node, result })
                        .collect::<Vec<_>>(),
                )?,
            };
            println!("{}", text.trim_end());
        }
        Format::Table => {
            let several = answers.len() > 1;
            let mut headers: Vec<&str> = Vec::new();
            if several {
                headers.push("NODE");
            }
            headers.extend(T::headers());
            let mut rows = Vec::new();
            for (node, answer) in answers {
                for row in answer.rows() {
                    let mut r = Vec::new();
                    if several {
                        r.push(node.clone());
                    }
                    r.extend(row);
                    rows.push(r);
                }
            }
            print!("{}", table(&headers, &rows));
        }
    }
    Ok(())
}

fn render<T: Serialize + ?Sized>(format: Format, value: &T) -> Result<String> {
    Ok(match format {
        Format::Yaml => serde_yaml::to_string(value)?,
        _ => serde_json::to_string_pretty(value)?,
    })
}

/// Left-aligned columns, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            l.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// 1536 → "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_sizes_read_well() {
        let t = table(
            &["NAME", "STATE"],
            &[
                vec!["etcd".into(), "ready".into()],
                vec!["kube-apiserver".into(), "starting".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME            STATE\netcd            ready\nkube-apiserver  starting\n"
        );
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 * 1024 * 1024), "64.0 MiB");
    }
}
