package qcow2

import (
	"errors"
	"fmt"
	"io/fs"
)

var (
	// ErrExists is returned by Create when the path already exists; it
	// wraps fs.ErrExist so errors.Is(err, os.ErrExist) also holds.
	ErrExists = fmt.Errorf("image %w", fs.ErrExist)

	// ErrNotEmpty is returned by WriteTo when the file already has data.
	ErrNotEmpty = errors.New("file is not empty")

	// ErrInvalid is wrapped by every error Validate returns.
	ErrInvalid = errors.New("invalid options")
)
