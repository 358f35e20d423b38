# Build a golden edge image with Packer, then record it as an (unsigned) edgefleet release.
# Signing stays a separate, human step with offline keys:
#   edgefleet release sign --workspace $WS --keys-dir /media/offline/keys --key targets-1
#   edgefleet release publish --workspace $WS
#
#   packer init . && packer build -var version=2026.12.0 -var counter=12 .

packer {
  required_plugins {
    qemu = {
      source  = "github.com/hashicorp/qemu"
      version = ">= 1.1.0"
    }
  }
}

variable "version" { type = string }
variable "counter" { type = number }
variable "hardware_ids" {
  type    = string
  default = "hw-x86"               # comma-separated hardware types the image fits
}
variable "workspace" {
  type    = string
  default = "release-workspace"    # created by `edgefleet keys init`
}
variable "base_image" {
  type    = string
  default = "debian-12-genericcloud-amd64.qcow2"
}

source "qemu" "edge" {
  iso_url          = var.base_image
  iso_checksum     = "none"
  disk_image       = true
  format           = "raw"
  output_directory = "output-${var.version}"
  vm_name          = "edge-${var.version}.raw"
  headless         = true
  ssh_username     = "packer"
  ssh_timeout      = "15m"
  shutdown_command = "sudo systemctl poweroff"
}

build {
  sources = ["source.qemu.edge"]

  provisioner "shell" {
    inline = [
      "sudo apt-get update && sudo apt-get -y upgrade",
      "echo 'EDGEFLEET_RELEASE_COUNTER=${var.counter}' | sudo tee -a /etc/os-release",
    ]
  }

  post-processor "shell-local" {
    environment_vars = [
      "IMAGE=output-${var.version}/edge-${var.version}.raw",
      "VERSION=${var.version}",
      "COUNTER=${var.counter}",
      "HARDWARE_IDS=${var.hardware_ids}",
      "EDGEFLEET_RELEASE_WORKSPACE=${var.workspace}",
    ]
    script = "edgefleet-release.sh"
  }
}
