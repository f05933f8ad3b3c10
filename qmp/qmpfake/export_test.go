package qmpfake

// CreateQcow2 makes an empty qcow2 image, as qemu-img create does.
var CreateQcow2 = createQcow2
