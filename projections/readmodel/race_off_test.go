//go:build !race

package readmodel_test

const underRace = false
