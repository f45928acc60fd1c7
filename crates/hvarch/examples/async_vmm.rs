//! A minimal VMM on hvarch's tokio facade ([`hvarch::AsyncVm`]): boot an arm64 guest under TCG, hot-plug a
//! disk, save the VM to a file, restore it into a new QEMU, and shut it down.
//!
//! `cargo run -p hvarch --features tokio --example async_vmm -- KERNEL INITRAMFS WORKDIR`

use std::time::Duration;

use hvarch::hvarch_arch::settings::BlockDriver;
use hvarch::{assemble, AsyncVm, LaunchOptions, Placement};

mod vmm_common;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (spec, work) = vmm_common::args()?;
    let mut vm = AsyncVm::launch(assemble(&spec)?, LaunchOptions::default()).await?;
    vm.resume().await?;
    println!("launched QEMU {} ({})", vm.pid(), vm.status().await?);

    let disk = vmm_common::disk(&work)?;
    let plugged = vm
        .hotplug()
        .add_block(&disk, BlockDriver::VirtioBlk, Placement::Auto)
        .await?;
    let path = plugged.pci_path.map(|p| p.to_string()).unwrap_or_default();
    println!("hot-plugged {} at PCI path {path}", plugged.id);

    let snapshot = work.join("vm.state");
    vm.save(&snapshot).await?;
    println!("saved to {} ({})", snapshot.display(), vm.status().await?);
    println!("source: {}", vm.shutdown(Duration::ZERO).await?);
    drop(vm); // Its runtime directory is free for the restored VM.

    let mut vm = AsyncVm::restore(assemble(&spec)?, &snapshot, LaunchOptions::default()).await?;
    vm.resume().await?;
    let devices = vm.hotplug_state().plugged_ids();
    println!(
        "restored QEMU {} ({}) with {devices:?}",
        vm.pid(),
        vm.status().await?
    );
    println!("restored: {}", vm.shutdown(Duration::from_secs(5)).await?);
    Ok(())
}
