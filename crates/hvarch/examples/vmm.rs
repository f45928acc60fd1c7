//! A minimal VMM on hvarch's blocking facade: boot an arm64 guest under TCG, hot-plug a
//! disk, save the VM to a file, restore it into a new QEMU, and shut it down.
//!
//! `cargo run -p hvarch --example vmm -- KERNEL INITRAMFS WORKDIR`

use std::time::Duration;

use hvarch::hvarch_arch::settings::BlockDriver;
use hvarch::{assemble, LaunchOptions, Placement, Vm};

mod vmm_common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (spec, work) = vmm_common::args()?;
    let mut vm = Vm::launch(assemble(&spec)?, LaunchOptions::default())?;
    vm.resume()?;
    println!("launched QEMU {} ({})", vm.pid(), vm.status()?);

    let disk = vmm_common::disk(&work)?;
    let plugged = vm
        .hotplug()
        .add_block(&disk, BlockDriver::VirtioBlk, Placement::Auto)?;
    let path = plugged.pci_path.map(|p| p.to_string()).unwrap_or_default();
    println!("hot-plugged {} at PCI path {path}", plugged.id);

    let snapshot = work.join("vm.state");
    vm.save(&snapshot)?;
    println!("saved to {} ({})", snapshot.display(), vm.status()?);
    println!("source: {}", vm.shutdown(Duration::ZERO)?);
    drop(vm); // Its runtime directory is free for the restored VM.

    let mut vm = Vm::restore(assemble(&spec)?, &snapshot, LaunchOptions::default())?;
    vm.resume()?;
    let devices = vm.hotplug_state().plugged_ids();
    println!(
        "restored QEMU {} ({}) with {devices:?}",
        vm.pid(),
        vm.status()?
    );
    println!("restored: {}", vm.shutdown(Duration::from_secs(5))?);
    Ok(())
}
