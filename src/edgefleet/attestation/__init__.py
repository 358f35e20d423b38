"""Remote attestation with TPM 2.0.

``tpm2b`` and ``structures`` parse the TPM's big-endian wire structures (TPMS_ATTEST,
TPMT_SIGNATURE, TPMT_PUBLIC) strictly; ``eventlog`` reads, writes and replays the TCG PC
Client crypto-agile boot event log; ``verifier`` turns bytes, policy and time into a
verdict. All of it is pure: no TPM, no network, no clock reads.
"""
