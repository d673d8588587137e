//! Writes a bundle for inspection: `cargo run -p cairn-pki --example generate -- DIR NODE IP`.

use std::process::ExitCode;

use cairn_pki::{ClusterParams, Existing, Hostname, OffsetDateTime};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, node, ip] = args.as_slice() else {
        eprintln!("usage: generate DIR NODE ADVERTISE_IP");
        return ExitCode::FAILURE;
    };
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        let node = Hostname::try_from(node.clone())?;
        let params = ClusterParams::new(node, ip.parse()?, OffsetDateTime::now_utc());
        let bundle = cairn_pki::generate(&params)?;
        bundle.write_to(dir.as_ref(), Existing::Keep)?;
        cairn_pki::check(&cairn_pki::Bundle::load(dir.as_ref())?, &params)?;
        println!("wrote {} files to {dir}", bundle.len());
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
