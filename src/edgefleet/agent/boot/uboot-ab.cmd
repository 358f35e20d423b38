# edgefleet A/B slot selection for U-Boot: build with
#   mkimage -A arm64 -T script -C none -d uboot-ab.cmd boot.scr
# The rules are those of edgefleet.agent.slotenv, which the emulated device also follows:
# the first slot in BOOT_ORDER that is good, or that has tries left (one is used up and
# saved before booting); otherwise the first good slot, otherwise A.
# Board specifics come from the environment: devtype, devnum, edgefleet_part_a/_b
# (partition numbers of root-a/root-b), kernel_addr_r, fdt_addr_r.
setenv edgefleet_slot
for s in ${BOOT_ORDER}; do
  if test -z "${edgefleet_slot}"; then
    if test "${s}" = "A"; then
      if test "${BOOT_A_GOOD}" = "1"; then
        setenv edgefleet_slot A
      elif test "${BOOT_A_LEFT}" = "3"; then
        setenv BOOT_A_LEFT 2
        saveenv
        setenv edgefleet_slot A
      elif test "${BOOT_A_LEFT}" = "2"; then
        setenv BOOT_A_LEFT 1
        saveenv
        setenv edgefleet_slot A
      elif test "${BOOT_A_LEFT}" = "1"; then
        setenv BOOT_A_LEFT 0
        saveenv
        setenv edgefleet_slot A
      fi
    elif test "${s}" = "B"; then
      if test "${BOOT_B_GOOD}" = "1"; then
        setenv edgefleet_slot B
      elif test "${BOOT_B_LEFT}" = "3"; then
        setenv BOOT_B_LEFT 2
        saveenv
        setenv edgefleet_slot B
      elif test "${BOOT_B_LEFT}" = "2"; then
        setenv BOOT_B_LEFT 1
        saveenv
        setenv edgefleet_slot B
      elif test "${BOOT_B_LEFT}" = "1"; then
        setenv BOOT_B_LEFT 0
        saveenv
        setenv edgefleet_slot B
      fi
    fi
  fi
done
if test -z "${edgefleet_slot}"; then
  if test "${BOOT_A_GOOD}" = "1"; then
    setenv edgefleet_slot A
  elif test "${BOOT_B_GOOD}" = "1"; then
    setenv edgefleet_slot B
  else
    setenv edgefleet_slot A
  fi
fi
if test "${edgefleet_slot}" = "B"; then
  setenv edgefleet_part ${edgefleet_part_b}
  setenv bootargs "${bootargs} root=PARTLABEL=root-b ro edgefleet.slot=b"
else
  setenv edgefleet_part ${edgefleet_part_a}
  setenv bootargs "${bootargs} root=PARTLABEL=root-a ro edgefleet.slot=a"
fi
load ${devtype} ${devnum}:${edgefleet_part} ${kernel_addr_r} /boot/Image
load ${devtype} ${devnum}:${edgefleet_part} ${fdt_addr_r} /boot/board.dtb
booti ${kernel_addr_r} - ${fdt_addr_r}
